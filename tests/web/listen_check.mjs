// Drives the page's Listen mode in headless Chromium with a fake microphone that plays a wav file:
//
//   node listen_check.mjs URL WAV SCREENSHOT.png HOPS RECORDING.f32
//
// Clicks Listen, waits for HOPS hops, writes what the page captured (mono float32 at the model's
// rate, raw little-endian) to RECORDING.f32 and prints one JSON object: {pageState, listenState,
// hops: [{start, end, label, prob, probs, flags, inferMs}], console}. The screenshot is taken at the end.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const webDir = path.resolve(here, "../../examples/web");
const { chromium } = createRequire(path.join(webDir, "package.json"))("playwright-core");

const TIMEOUT_MS = 120_000;
const [url, wav, screenshot, hops, recording] = process.argv.slice(2);
if (!url || !wav || !screenshot || !hops || !recording) {
  console.error("usage: node listen_check.mjs URL WAV SCREENSHOT.png HOPS RECORDING.f32");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", `--use-file-for-fake-audio-capture=${wav}`],
});
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 900 } });
  const messages = [];
  page.on("console", (m) => messages.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => messages.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForSelector('#app[data-state="ready"], #app[data-state="error"]', { timeout: TIMEOUT_MS });
  const out = { pageState: await page.locator("#app").getAttribute("data-state"), hops: [] };
  if (out.pageState === "ready") {
    await page.click("#listen-button");
    await page.waitForFunction((n) => {
      const panel = document.getElementById("listen");
      return Number(panel.dataset.hops) >= n || panel.dataset.state === "error";
    }, Number(hops), { timeout: TIMEOUT_MS, polling: 100 });
    await page.screenshot({ path: screenshot, fullPage: true });
    const shown = await page.evaluate(() => {
      const blocks = window.listenRecording || [];
      const total = blocks.reduce((n, b) => n + b.length, 0);
      const all = new Float32Array(total);
      let at = 0;
      for (const b of blocks) { all.set(b, at); at += b.length; }
      let binary = "";
      const bytes = new Uint8Array(all.buffer);
      for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      return { listenState: document.getElementById("listen").dataset.state, hops: window.listenHops, recording: btoa(binary) };
    });
    fs.writeFileSync(recording, Buffer.from(shown.recording, "base64"));
    out.listenState = shown.listenState;
    out.hops = shown.hops;
    out.error = await page.locator("#error").isHidden() ? null : await page.locator("#error").textContent();
  }
  out.console = messages;
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}

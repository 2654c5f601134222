// Drives headless Chromium through examples/web: load the page, choose each audio file in turn,
// wait for the page to finish with it, read what it shows. Used by asc_deploy.bench.browser (the
// browser benchmark, asc-bench --browser) and tests/web/test_browser.py.
//
//   node web_page.mjs URL SCREENSHOT.png AUDIO...
//
// Prints one JSON object: {pageState, loadMs, warmupMs, threads, isolated, workers, threadsNote,
// status, runs: [{state, error, probs, logits, labels, predicted, inferMs, resultMs, wallMs}],
// console}. threads: what onnxruntime-web started; workers: the page's dedicated workers (its
// wasm threads but the calling one); threadsNote: whether the "not cross-origin isolated" note is
// shown. The screenshot is taken after the first file.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const webDir = path.resolve(here, "../examples/web");
const { chromium } = createRequire(path.join(webDir, "package.json"))("playwright-core");

const TIMEOUT_MS = 120_000;
const [url, screenshot, ...files] = process.argv.slice(2);
if (!url || !screenshot || !files.length) {
  console.error("usage: node web_page.mjs URL SCREENSHOT.png AUDIO...");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic"],
});
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 820 } });
  const messages = [];
  page.on("console", (m) => messages.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => messages.push(`pageerror: ${e.message}`));
  const t0 = Date.now();
  await page.goto(url);
  await page.waitForSelector('#app[data-state="ready"], #app[data-state="error"]', { timeout: TIMEOUT_MS });
  const app = page.locator("#app");
  const out = await page.evaluate(() => {
    const data = document.getElementById("app").dataset;
    return { pageState: data.state, loadMs: Number(data.loadMs), warmupMs: Number(data.warmupMs), threads: Number(data.threads),
      isolated: data.isolated === "true", threadsNote: !document.getElementById("threads-note").hidden,
      status: document.getElementById("model-status").textContent, runs: [] };
  });
  out.workers = page.workers().length;
  if (out.pageState === "ready") {
    for (const [i, file] of files.entries()) {
      const run = Number(await app.getAttribute("data-run"));
      await page.setInputFiles("#file", file);
      await page.waitForSelector(`#app[data-run="${run + 1}"]`, { timeout: TIMEOUT_MS });
      const shown = await page.evaluate(() => {
        const app = document.getElementById("app");
        const result = document.getElementById("result").dataset;
        const done = app.dataset.state === "done";
        return {
          state: app.dataset.state,
          error: document.getElementById("error").hidden ? null : document.getElementById("error").textContent,
          probs: done ? JSON.parse(result.probs) : null,
          logits: done ? JSON.parse(result.logits) : null,
          labels: done ? JSON.parse(result.labels) : null,
          predicted: done ? result.predicted : null,
          inferMs: done ? Number(result.inferMs) : null,
          resultMs: done ? Number(result.resultMs) : null,
        };
      });
      out.runs.push({ ...shown, wallMs: Date.now() - t0 });
      if (i === 0) await page.screenshot({ path: screenshot, fullPage: true });
    }
  } else {
    out.error = await page.locator("#error").textContent();
    await page.screenshot({ path: screenshot, fullPage: true });
  }
  out.console = messages;
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}

// Acoustic scene classification in the browser: exported asc-deploy ONNX model + onnxruntime-web (wasm).
//
// Labels, sample rate and clip length come from the model file itself: onnxruntime-web does not
// expose ONNX metadata_props, so readOnnxMetadata() walks the ModelProto bytes (field 14,
// metadata_props) with a minimal protobuf reader. Audio follows the Python runtime
// (asc_deploy/audio.py): decode, resample to the model's rate, average the channels, refuse clips
// under 1 s, split clips longer than one window into windows and average their probabilities.
"use strict";

const MIN_SECONDS = 1; // the runtime refuses shorter clips (asc_deploy.labels.MIN_SECONDS)
const ORT_DIST = "node_modules/onnxruntime-web/dist/";
const MAX_THREADS = 4; // wasm threads at most (onnxruntime-web's own default cap)

const $ = (id) => document.getElementById(id);
const app = $("app");

// ---- ONNX metadata_props from the protobuf bytes -------------------------------------------

function readVarint(bytes, pos) {
  let value = 0;
  for (let shift = 0; ; shift += 7) {
    if (pos >= bytes.length) throw new Error("truncated ONNX file");
    const b = bytes[pos++];
    value += (b & 0x7f) * 2 ** shift; // arithmetic, not <<, so values above 2^31 stay exact
    if (!(b & 0x80)) return [value, pos];
  }
}

// Calls onField(fieldNumber, start, end) for every length-delimited field in bytes[pos, end).
function forEachBytesField(bytes, pos, end, onField) {
  while (pos < end) {
    let tag, len;
    [tag, pos] = readVarint(bytes, pos);
    const wire = tag % 8;
    if (wire === 0) [, pos] = readVarint(bytes, pos);
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      [len, pos] = readVarint(bytes, pos);
      onField(Math.floor(tag / 8), pos, pos + len);
      pos += len;
    } else throw new Error(`not an ONNX file (protobuf wire type ${wire})`);
  }
}

function readOnnxMetadata(bytes) {
  const utf8 = new TextDecoder();
  const props = {};
  forEachBytesField(bytes, 0, bytes.length, (field, start, end) => {
    if (field !== 14) return; // ModelProto.metadata_props: StringStringEntryProto {1: key, 2: value}
    const entry = {};
    forEachBytesField(bytes, start, end, (f, s, e) => { entry[f] = utf8.decode(bytes.subarray(s, e)); });
    props[entry[1]] = entry[2];
  });
  return props;
}

// ---- model ---------------------------------------------------------------------------------

// WebAssembly threads when the page is cross-origin isolated (COOP/COEP headers: SharedArrayBuffer):
// every core but one (at least 1, at most MAX_THREADS), or ?threads=N; else 1. The core left over
// keeps the page and Listen mode's audio capture responsive: with every core busy in inference,
// Chromium's capture thread starved and dropped samples, and on 2 cores a second wasm thread was
// slower than one (examples/web/README.md). onnxruntime-web's own default is half the cores.
function wasmThreads() {
  if (!self.crossOriginIsolated) return 1;
  const asked = Number(new URLSearchParams(location.search).get("threads"));
  const cores = navigator.hardwareConcurrency || 1;
  return Number.isInteger(asked) && asked > 0 ? asked : Math.max(1, Math.min(MAX_THREADS, cores - 1));
}

async function loadModel(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot load model ${url}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const meta = readOnnxMetadata(bytes);
  if (!meta.labels || !meta.sample_rate) throw new Error(`${url} is not an asc-deploy model (no labels/sample_rate metadata)`);
  if (meta.variant !== "single") throw new Error(`${url}: the ${meta.variant} variant needs extra inputs; export the single variant`);
  ort.env.wasm.wasmPaths = new URL(ORT_DIST, location.href).href; // absolute: ort import()s the .mjs glue
  ort.env.wasm.numThreads = wasmThreads(); // read before the first session: fixed for the page's life
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  const model = {
    session,
    labels: JSON.parse(meta.labels),
    sampleRate: Number(meta.sample_rate),
    clipSeconds: Number(meta.clip_seconds),
    precision: meta.precision,
    // calibrated models divide the logits by it in the graph, so the probabilities shown are calibrated
    temperature: meta.temperature ?? "1.0",
    threads: ort.env.wasm.numThreads, // what onnxruntime-web started (it falls back to 1 without isolation)
  };
  // Warm-up: one inference on a silent full window before the first clip. The first run of a session
  // pays for compiling and allocating (here 3-4x a later run); the user's first clip should not.
  const t0 = performance.now();
  const silence = new Float32Array(Math.round(model.clipSeconds * model.sampleRate));
  await session.run({ waveform: new ort.Tensor("float32", silence, [1, silence.length]) });
  model.warmupMs = performance.now() - t0;
  return model;
}

// How the model runs, for the UI: "wasm SIMD, 2 threads, fp32".
function backendLabel(model) {
  return `wasm SIMD, ${model.threads} thread${model.threads > 1 ? "s" : ""}, ${model.precision}`;
}

// ---- audio ---------------------------------------------------------------------------------

// Decoded, resampled to sampleRate (decodeAudioData of a context at that rate) and averaged to mono.
async function decodeMono(arrayBuffer, sampleRate) {
  const ctx = new OfflineAudioContext(1, 1, sampleRate);
  const buffer = await ctx.decodeAudioData(arrayBuffer);
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += data[i];
  }
  if (buffer.numberOfChannels > 1) for (let i = 0; i < mono.length; i++) mono[i] /= buffer.numberOfChannels;
  return mono;
}

// Window start offsets like asc_deploy.audio.iter_windows with hop = window: the whole clip when it
// fits in one window, else back-to-back windows plus one covering the final window of samples.
function windowStarts(samples, window) {
  if (samples <= window) return [0];
  const starts = [];
  for (let s = 0; s + window <= samples; s += window) starts.push(s);
  if (starts[starts.length - 1] + window < samples) starts.push(samples - window);
  return starts;
}

async function classify(model, waveform) {
  const window = Math.round(model.clipSeconds * model.sampleRate);
  const length = Math.min(window, waveform.length);
  const starts = windowStarts(waveform.length, window);
  const probs = new Float64Array(model.labels.length);
  const logits = new Float64Array(model.labels.length);
  const t0 = performance.now();
  for (const start of starts) { // one window per run keeps memory flat for long files
    const input = new ort.Tensor("float32", waveform.slice(start, start + length), [1, length]);
    const out = await model.session.run({ waveform: input });
    out.probs.data.forEach((p, k) => { probs[k] += p / starts.length; });
    out.logits.data.forEach((l, k) => { logits[k] += l / starts.length; });
  }
  // probs: mean over windows (what the runtime reports); logits: mean too, shown for checks only
  return { probs: Array.from(probs), logits: Array.from(logits), windows: starts.length, inferMs: performance.now() - t0 };
}

// ---- Listen mode: the microphone, classified every hop ---------------------------------------
//
// The same windowing as asc_deploy.streaming.StreamClassifier: prediction k covers the samples
// [max(0, end - window), end) with end = 1 s + k * hop (hop 43 frames = 44,032 samples, window the
// model's clip), one onnxruntime-web call of the waveform model per hop, and the same
// input-quality flags with the same thresholds (asc_deploy.streaming.QualityThresholds).

const HOP_FRAMES = 43; // asc_deploy.streaming.DEFAULT_HOP_FRAMES
const FRAME_HOP = 1024; // samples per log-mel frame hop (model metadata hop_length)
const SILENCE_PEAK = 2 ** -15;
const CLIP_LEVEL = 0.999;
const CLIP_FRACTION = 1e-3;
const HISTORY = 8; // hops shown
const KEPT_HOPS = 1000; // hops kept in window.listenHops (for tests and the console)

// The last `size` samples of each channel (ring buffers), and the total count seen.
class Tail {
  constructor(size, channels) {
    this.size = size;
    this.rings = Array.from({ length: channels }, () => new Float32Array(size));
    this.total = 0;
  }

  append(channels, from, to) {
    for (let i = from; i < to; i++) {
      const at = (this.total + i - from) % this.size;
      channels.forEach((data, c) => { this.rings[c][at] = data[i]; });
    }
    this.total += to - from;
  }

  // The last `count` samples of channel c, oldest first.
  last(c, count) {
    const out = new Float32Array(count);
    const ring = this.rings[c];
    const start = (this.total - count) % this.size;
    const first = Math.min(count, this.size - start);
    out.set(ring.subarray(start, start + first), 0);
    if (first < count) out.set(ring.subarray(0, count - first), first);
    return out;
  }
}

function qualityFlags(mono, channels) {
  const peak = (data) => data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  const flags = [];
  if (peak(mono) <= SILENCE_PEAK) flags.push("silence");
  const clipped = channels.reduce((n, data) => n + data.reduce((k, v) => k + (Math.abs(v) >= CLIP_LEVEL ? 1 : 0), 0), 0);
  if (clipped >= CLIP_FRACTION * mono.length) flags.push("clipping");
  if (channels.length > 1) {
    const peaks = channels.map(peak);
    if (peaks.some((p) => p <= SILENCE_PEAK) && peaks.some((p) => p > SILENCE_PEAK)) flags.push("dead_channel");
  }
  return flags;
}

class Listener {
  constructor(model, onHop, record) {
    this.model = model;
    this.onHop = onHop;
    this.window = Math.round(model.clipSeconds * model.sampleRate);
    this.hop = HOP_FRAMES * FRAME_HOP;
    this.nextEnd = Math.round(MIN_SECONDS * model.sampleRate);
    this.tail = null;
    this.queue = [];
    this.busy = false;
    this.recording = record ? [] : null; // mono blocks as captured (tests compare with asc-stream)
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    // The context runs at the model's rate: the browser resamples the capture to it.
    this.context = new AudioContext({ sampleRate: this.model.sampleRate });
    await this.context.audioWorklet.addModule("listen-worklet.js");
    const source = this.context.createMediaStreamSource(this.stream);
    this.node = new AudioWorkletNode(this.context, "asc-capture");
    this.node.port.onmessage = (e) => this.push(e.data.channels);
    source.connect(this.node).connect(this.context.destination); // silent output; the graph pulls it
    await this.context.resume();
  }

  async stop() {
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.context) await this.context.close();
  }

  push(channels) {
    if (!this.tail) this.tail = new Tail(this.window, channels.length + 1); // mono, then each channel
    const mono = new Float32Array(channels[0].length);
    channels.forEach((data) => data.forEach((v, i) => { mono[i] += v; }));
    if (channels.length > 1) mono.forEach((v, i) => { mono[i] = v / channels.length; });
    if (this.recording) this.recording.push(mono);
    const all = [mono, ...channels];
    let done = 0;
    while (done < mono.length) {
      const take = Math.min(mono.length - done, this.nextEnd - this.tail.total);
      this.tail.append(all, done, done + take);
      done += take;
      if (this.tail.total === this.nextEnd) {
        const length = Math.min(this.nextEnd, this.window);
        const samples = this.tail.last(0, length);
        const perChannel = channels.map((_, c) => this.tail.last(c + 1, length));
        this.queue.push({ start: this.nextEnd - length, end: this.nextEnd, samples, flags: qualityFlags(samples, perChannel) });
        this.nextEnd += this.hop;
      }
    }
    this.drain();
  }

  // One onnxruntime-web call per hop, in order; hops wait while one runs.
  async drain() {
    if (this.busy) return;
    this.busy = true;
    try {
      while (this.queue.length) {
        const hop = this.queue.shift();
        const t0 = performance.now();
        const input = new ort.Tensor("float32", hop.samples, [1, hop.samples.length]);
        const out = await this.model.session.run({ waveform: input });
        const probs = Array.from(out.probs.data);
        const best = probs.indexOf(Math.max(...probs));
        const rate = this.model.sampleRate;
        this.onHop({ start: hop.start / rate, end: hop.end / rate, label: this.model.labels[best], prob: probs[best], probs,
          flags: hop.flags, inferMs: performance.now() - t0, waiting: this.queue.length });
      }
    } finally {
      this.busy = false;
    }
  }
}

function showHop(model, hop) {
  window.listenHops.push(hop);
  if (window.listenHops.length > KEPT_HOPS) window.listenHops.shift();
  $("listen-scene").textContent = hop.label.replaceAll("_", " ");
  $("listen-prob").textContent = `${(100 * hop.prob).toFixed(1)} %`;
  $("listen-flags").replaceChildren(...hop.flags.map((flag) => {
    const badge = document.createElement("span");
    badge.className = "flag";
    badge.textContent = flag.replace("_", " ");
    return badge;
  }));
  $("listen-info").textContent = `window ${hop.start.toFixed(2)}-${hop.end.toFixed(2)} s · inference ${hop.inferMs.toFixed(0)} ms (${backendLabel(model)})`;
  const row = document.createElement("tr");
  [`${hop.start.toFixed(1)}-${hop.end.toFixed(1)} s`, hop.label.replaceAll("_", " "), `${(100 * hop.prob).toFixed(1)} %`,
    hop.flags.join(", ") || "-"].forEach((text) => {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.append(cell);
  });
  const history = $("listen-history");
  history.prepend(row);
  while (history.children.length > HISTORY) history.lastChild.remove();
  const panel = $("listen");
  panel.dataset.hops = String(Number(panel.dataset.hops) + 1);
  panel.dataset.scene = hop.label;
}

function setupListen(modelReady) {
  const button = $("listen-button");
  const panel = $("listen");
  const record = new URLSearchParams(location.search).has("record");
  let listener = null;
  window.listenHops = [];
  modelReady.then(() => { button.disabled = false; }, () => {});
  button.addEventListener("click", async () => {
    if (listener) {
      await listener.stop();
      listener = null;
      button.textContent = "Listen";
      panel.dataset.state = "stopped";
      return;
    }
    $("error").hidden = true;
    try {
      const model = await modelReady;
      listener = new Listener(model, (hop) => showHop(model, hop), record);
      window.listenRecording = listener.recording;
      await listener.start();
      button.textContent = "Stop";
      panel.dataset.state = "listening";
      panel.hidden = false;
    } catch (err) {
      listener = null;
      panel.dataset.state = "error";
      showError(`cannot listen: ${err.message || err}`);
    }
  });
}

// ---- page ----------------------------------------------------------------------------------

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  app.dataset.state = "error";
}

function showResult(model, name, seconds, result) {
  const best = result.probs.indexOf(Math.max(...result.probs));
  $("predicted").textContent = model.labels[best].replaceAll("_", " ");
  $("clip-info").textContent = `${name}: ${seconds.toFixed(2)} s, ${result.windows} window${result.windows > 1 ? "s" : ""}`;
  $("bars").replaceChildren(...model.labels.map((label, k) => {
    const row = document.createElement("div");
    row.className = k === best ? "row best" : "row";
    const pct = (100 * result.probs[k]).toFixed(1);
    row.innerHTML = `<span class="label"></span><span class="track"><span class="bar" style="width:${pct}%"></span></span><span class="value">${pct}%</span>`;
    row.querySelector(".label").textContent = label.replaceAll("_", " ");
    return row;
  }));
  const shownMs = performance.now();
  $("timing").textContent = `inference ${result.inferMs.toFixed(1)} ms (${backendLabel(model)}${model.temperature !== "1.0" ? `, calibrated T = ${model.temperature}` : ""}) · model ready ${app.dataset.loadMs} ms after page start`;
  const section = $("result");
  Object.assign(section.dataset, {
    probs: JSON.stringify(result.probs),
    logits: JSON.stringify(result.logits),
    labels: JSON.stringify(model.labels),
    predicted: model.labels[best],
    inferMs: result.inferMs.toFixed(3),
    resultMs: shownMs.toFixed(1), // since navigation start
  });
  section.hidden = false;
  app.dataset.state = "done";
}

async function handleFile(modelReady, file) {
  $("error").hidden = true;
  app.dataset.state = "running";
  try {
    const model = await modelReady;
    const waveform = await decodeMono(await file.arrayBuffer(), model.sampleRate).catch((err) => {
      throw new Error(`cannot decode ${file.name} (${err.message || err})`);
    });
    const seconds = waveform.length / model.sampleRate;
    if (seconds < MIN_SECONDS) throw new Error(`${file.name} is too short: ${seconds.toFixed(3)} s, need at least ${MIN_SECONDS} s`);
    showResult(model, file.name, seconds, await classify(model, waveform));
  } catch (err) {
    $("result").hidden = true;
    showError(err.message || String(err));
  } finally {
    app.dataset.run = String(Number(app.dataset.run) + 1);
  }
}

function main() {
  const modelUrl = new URLSearchParams(location.search).get("model") || "model.onnx";
  const modelReady = loadModel(modelUrl);
  modelReady.then((model) => {
    app.dataset.loadMs = performance.now().toFixed(1);
    Object.assign(app.dataset, { threads: String(model.threads), isolated: String(self.crossOriginIsolated),
      warmupMs: model.warmupMs.toFixed(1) });
    $("model-status").textContent = `Model ${modelUrl}: ${model.labels.length} scenes, ${model.sampleRate} Hz, ready in `
      + `${app.dataset.loadMs} ms (warm-up inference ${model.warmupMs.toFixed(0)} ms, ${backendLabel(model)})`;
    $("threads-note").hidden = self.crossOriginIsolated;
    $("file").disabled = false;
    app.dataset.state = "ready";
  }, (err) => {
    $("model-status").textContent = "Model not loaded.";
    showError(err.message || String(err));
  });

  setupListen(modelReady);
  $("file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = ""; // choosing the same file again fires "change" again
    if (file) handleFile(modelReady, file);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) handleFile(modelReady, e.dataTransfer.files[0]);
  });
}

main();

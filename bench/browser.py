"""Browser benchmark: the example page (examples/web, onnxruntime-web on WebAssembly) in headless
Chromium against onnxruntime native (Python, CPU provider) on the same model and the same 10 s
clip, measured in ONE run (``asc-bench --browser``; :mod:`tests.web.test_browser` prints it too).

Rows, each timed per 10 s clip:

- ``onnxruntime native, N thread(s)``: a session with the runtime's options
  (:class:`~asc_deploy.ort_runner.SessionConfig`, ``intra_op_threads`` N), after warm-up calls;
- ``wasm, isolated, default threads``: the page served with the COOP/COEP headers
  (examples/web/serve.py), so that onnxruntime-web starts its default threads (every core but
  one, at least 1, at most 4: one thread on a 2-core machine);
- ``wasm, isolated, 2 threads``: the same page with ``?threads=2`` (threads proven to run, on any machine);
- ``wasm, not isolated``: the page served without the headers: its fallback, one thread.

A page row loads the page (which runs one warm-up inference on a silent window after loading the
model, reported as ``warm-up``), then chooses the clip ``iterations`` times and reads the time the
page shows (``data-infer-ms``: ``session.run`` on the clip's window). ``first`` is the first user
clip after the warm-up. The rows are measured round-robin over ``rounds`` rounds (a new page each
round), so a change of machine load hits them alike; ``spread`` is the slowest over the fastest
round median, and ``ratio`` is the row's median over native 1 thread's (all rounds pooled).

Every page row also returns the probabilities it showed, so that callers can check them against
onnxruntime native (the test does, within 1e-4). Needs a checkout with examples/web/node_modules
(``.ci/install-browser``), node and /usr/bin/chromium.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from asc_deploy.errors import AscError
from asc_deploy.metadata import INPUT_WAVEFORM, OUTPUT_PROBS

WEB = Path(__file__).resolve().parents[1] / "examples" / "web"
DRIVER = Path(__file__).with_name("web_page.mjs")
CHROMIUM = Path("/usr/bin/chromium")
NATIVE_THREADS = (1, 2)
PAGE_TIMEOUT_S = 300


def missing() -> str | None:
    """Why the browser cannot run here (None when it can)."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (run .ci/install-browser)"
    if shutil.which("node") is None:
        return "node is not on PATH"
    for package in ("onnxruntime-web", "playwright-core"):
        if not (WEB / "node_modules" / package / "package.json").is_file():
            return f"examples/web/node_modules/{package} is missing (run .ci/install-browser)"
    return None


def _serve_module():
    """examples/web/serve.py (a standalone script, loaded by path)."""
    spec = importlib.util.spec_from_file_location("asc_web_serve", WEB / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def serve(extra: dict[str, Path], isolate: bool = True) -> Iterator[str]:
    """examples/web over HTTP on a free port (examples/web/serve.py's server; ``isolate``: with the
    COOP/COEP headers), plus ``extra`` URL paths mapped to files elsewhere; yields the base URL."""
    web = _serve_module()

    class Handler(web.Handler):
        def translate_path(self, path: str) -> str:
            url_path = urlsplit(path).path
            return str(extra[url_path]) if url_path in extra else super().translate_path(path)

        def log_message(self, *args) -> None:
            pass

    httpd = web.make_server(WEB, isolate=isolate, handler=Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def run_page(url: str, screenshot: Path, files: list[Path]) -> dict:
    """bench/web_page.mjs on ``url``: the page's state, threads and one run per file (see there)."""
    proc = subprocess.run(["node", str(DRIVER), url, str(screenshot), *map(str, files)], capture_output=True, text=True,
                          timeout=PAGE_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise AscError(f"the browser driver failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}", url)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class PageConfig:
    """One way of serving and opening the page."""

    name: str
    isolate: bool
    query: str = ""


PAGE_CONFIGS = (
    PageConfig("wasm, isolated, default threads", True),
    PageConfig("wasm, isolated, 2 threads", True, "&threads=2"),
    PageConfig("wasm, not isolated", False),
)


@dataclass
class Row:
    name: str
    rounds: list[list[float]] = field(default_factory=list)  # ms per clip, per round
    threads: int = 0
    isolated: bool | None = None
    workers: int | None = None  # the page's dedicated workers (wasm threads but the calling one)
    first_ms: list[float] = field(default_factory=list)  # the first user clip of each page load
    warmup_ms: list[float] = field(default_factory=list)
    probs: list[list[float]] = field(default_factory=list)  # what the page showed, per page load
    page: dict | None = None  # the last page load's full output (state, console, ...)

    @property
    def median(self) -> float:
        return float(np.median(np.concatenate(self.rounds)))

    @property
    def spread(self) -> float:
        medians = [float(np.median(r)) for r in self.rounds]
        return max(medians) / min(medians)


@dataclass
class BrowserBench:
    model: Path
    rows: list[Row]
    native_probs: np.ndarray  # onnxruntime native on the clip, shape (classes,)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def table(self) -> list[str]:
        """The printed table: per 10 s clip, each row against onnxruntime native on 1 thread."""
        base = self.row(native_name(1)).median
        lines = [f"browser benchmark: {self.model.name}, one 10 s clip per call, ms per clip "
                 f"({len(self.rows[0].rounds)} rounds, ratio: median / native 1 thread's median)",
                 f"{'row':36s} {'threads':>7s} {'median':>8s} {'first':>8s} {'warm-up':>8s} {'spread':>7s} {'ratio':>6s}"]
        for r in self.rows:
            first = f"{np.median(r.first_ms):8.1f}" if r.first_ms else f"{'-':>8s}"
            warm = f"{np.median(r.warmup_ms):8.1f}" if r.warmup_ms else f"{'-':>8s}"
            lines.append(f"{r.name:36s} {r.threads:7d} {r.median:8.1f} {first} {warm} {r.spread:6.2f}x {r.median / base:5.2f}x")
        return lines


def native_name(threads: int) -> str:
    return f"onnxruntime native, {threads} thread{'s' if threads > 1 else ''}"


def _native_timer(model: Path, waveform: np.ndarray, threads: int) -> tuple[Callable[[int], list[float]], np.ndarray]:
    """A function timing ``n`` calls (ms) of an onnxruntime session on 1 x ``waveform``, and its probs."""
    import time

    import onnxruntime as ort

    from asc_deploy.ort_runner import SessionConfig

    session = ort.InferenceSession(str(model), SessionConfig(intra_op_threads=threads).session_options(),
                                   providers=["CPUExecutionProvider"])
    feed = {INPUT_WAVEFORM: waveform[None, :]}
    probs = session.run([OUTPUT_PROBS], feed)[0][0]
    session.run([OUTPUT_PROBS], feed)  # warm-up: two calls

    def timed(n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            session.run([OUTPUT_PROBS], feed)
            times.append((time.perf_counter() - t0) * 1e3)
        return times

    return timed, probs


def measure(model: Path, clip: Path, iterations: int = 5, rounds: int = 2,
            progress: Callable[[str], None] = lambda _: None) -> BrowserBench:
    """Every row on ``model`` and ``clip`` (a 44.1 kHz float WAV of one window), round-robin."""
    import soundfile as sf

    reason = missing()
    if reason:
        raise AscError(f"the browser benchmark cannot run here: {reason}")
    if iterations < 1 or rounds < 1:
        raise ValueError(f"iterations and rounds must be >= 1, got {iterations} and {rounds}")
    waveform, _ = sf.read(clip, dtype="float32", always_2d=False)
    timers, native_probs = {}, None
    for threads in NATIVE_THREADS:
        timers[threads], native_probs = _native_timer(model, waveform, threads)
    rows = [Row(native_name(t), threads=t) for t in NATIVE_THREADS] + [Row(c.name) for c in PAGE_CONFIGS]
    with tempfile.TemporaryDirectory(prefix="asc-browser-") as tmp, contextlib.ExitStack() as stack:
        urls = {isolate: stack.enter_context(serve({"/models/bench.onnx": model}, isolate)) for isolate in (True, False)}
        for k in range(rounds):
            for threads in NATIVE_THREADS:
                rows[NATIVE_THREADS.index(threads)].rounds.append(timers[threads](iterations))
            for config, row in zip(PAGE_CONFIGS, rows[len(NATIVE_THREADS):]):
                progress(f"round {k + 1}/{rounds}: {config.name}")
                out = run_page(f"{urls[config.isolate]}/index.html?model=models/bench.onnx{config.query}", Path(tmp) / "page.png",
                               [clip] * iterations)
                if out["pageState"] != "ready" or any(run["state"] != "done" for run in out["runs"]):
                    raise AscError(f"the page failed on {config.name}: {out.get('error') or out['runs']}", clip)
                times = [run["inferMs"] for run in out["runs"]]
                row.rounds.append(times)
                row.first_ms.append(times[0])
                row.warmup_ms.append(out["warmupMs"])
                row.probs.append(out["runs"][0]["probs"])
                row.threads, row.isolated, row.workers, row.page = out["threads"], out["isolated"], out["workers"], out
    return BrowserBench(model, rows, np.asarray(native_probs, dtype=np.float64))


def max_prob_diff(bench: BrowserBench) -> float:
    """Largest |page - native| probability over every page load of every page row."""
    return max(float(np.abs(np.asarray(r.probs) - bench.native_probs).max()) for r in bench.rows if r.probs)


def write_report(out: Path, benches: list[BrowserBench]) -> Path:
    """Every table's rows (ms per clip per round, threads, first clip, warm-up) as JSON, atomically."""
    from asc_deploy.atomic import atomic_open

    report = [{"model": str(b.model), "max_prob_diff": max_prob_diff(b), "table": b.table(),
               "rows": [{"name": r.name, "threads": r.threads, "isolated": r.isolated, "workers": r.workers, "ms_rounds": r.rounds,
                         "median_ms": r.median, "spread": r.spread, "first_ms": r.first_ms, "warmup_ms": r.warmup_ms}
                        for r in b.rows]} for b in benches]
    with atomic_open(out) as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    return out


def run_cli(model: Path, schedules: list[str], iterations: int, rounds: int, report_dir: Path,
            echo: Callable[[str], None], progress: Callable[[str], None]) -> Path:
    """``asc-bench --browser``: a checkpoint MODEL is exported (fp32, single pass) with each of
    ``schedules``, an ONNX file is measured as it is; on a synthetic 10 s clip. Prints one table per
    graph and writes ``report_dir/browser.json``."""
    import soundfile as sf

    from asc_deploy.bench.perf import make_clips
    from asc_deploy.labels import SAMPLE_RATE
    from asc_deploy.runtime import read_model_metadata

    reason = missing()
    if reason:
        raise AscError(f"the browser benchmark cannot run here: {reason}")
    if model.suffix.lower() == ".onnx":
        if read_model_metadata(model).variant != "single":
            raise AscError("the page runs the single-pass variant (export without --tta)", model)
        models = [model]
    else:
        from asc_deploy.export.onnx_export import export_onnx

        models = [export_onnx(model, report_dir / "models" / f"browser.fp32.{s}.onnx", "fp32", False, s) for s in schedules]
    report_dir.mkdir(parents=True, exist_ok=True)
    clip = report_dir / "browser-clip.wav"
    sf.write(clip, make_clips(1, 10.0, seed=0)[0], SAMPLE_RATE, subtype="FLOAT")
    benches = []
    for path in models:
        bench = measure(path, clip, iterations, rounds, progress)
        benches.append(bench)
        for line in bench.table():
            echo(line)
        echo(f"probabilities: largest |page - native| {max_prob_diff(bench):.1e}\n")
    return write_report(report_dir / "browser.json", benches)

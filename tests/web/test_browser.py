"""examples/web in headless Chromium: the page's probabilities equal onnxruntime CPU's.

Serves examples/web and an exported model from a local http.server thread, drives Chromium with
tests/web/browser_check.mjs (playwright-core from examples/web/node_modules) and compares what
the page shows with onnxruntime on the same waveform. Setup: ``.ci/install-browser``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf

from asc_deploy.audio import iter_windows
from tests.shared_data import REPO

WEB = REPO / "examples" / "web"
SCRIPT = Path(__file__).with_name("browser_check.mjs")
CHROMIUM = Path("/usr/bin/chromium")
NODE = shutil.which("node")
SAMPLE_RATE = 44_100


def _missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (run .ci/install-browser)"
    if NODE is None:
        return "node is not on PATH"
    for package in ("onnxruntime-web", "playwright-core"):
        if not (WEB / "node_modules" / package / "package.json").is_file():
            return f"examples/web/node_modules/{package} is missing (run .ci/install-browser)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=_missing() or "")]


class _Handler(SimpleHTTPRequestHandler):
    """Static files of examples/web, plus ``extra`` URL paths mapped to files elsewhere."""

    extra: ClassVar[dict[str, Path]] = {}
    extensions_map: ClassVar[dict[str, str]] = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def translate_path(self, path: str) -> str:
        url_path = urlsplit(path).path
        return str(self.extra[url_path]) if url_path in self.extra else super().translate_path(path)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(exported):
    model = exported()
    handler = type("Handler", (_Handler,), {"extra": {"/models/asc.onnx": model}})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(WEB)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", model
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_page_matches_onnxruntime(server, reference, tmp_path):
    base_url, model = server
    # Two SP4ASC reference clips mixed: the model splits its vote (about 0.53 / 0.43 / 0.04), so
    # the comparison is not between two saturated one-hot vectors.
    clip = 0.5 * reference["wave/03_vehicle"] + 0.5 * reference["wave/04_birds"]
    wav, long, short = tmp_path / "scene.wav", tmp_path / "long_stereo.wav", tmp_path / "short.wav"
    # 44.1 kHz float WAVs: the page decodes the exact float32 samples, no resampling.
    sf.write(wav, clip, SAMPLE_RATE, subtype="FLOAT")
    long12 = reference["wave/11_long12s"]  # 12 s: two windows, [0, 10 s] and [2 s, 12 s]
    sf.write(long, np.stack([long12, np.resize(clip, long12.size)], axis=1), SAMPLE_RATE, subtype="FLOAT")
    sf.write(short, clip[: SAMPLE_RATE // 2], SAMPLE_RATE, subtype="FLOAT")
    screenshot = tmp_path / "web.png"

    proc = subprocess.run(
        [NODE, str(SCRIPT), f"{base_url}/index.html?model=models/asc.onnx", str(screenshot), str(wav), str(long), str(short)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pageState"] == "ready", out
    done, done_long, too_short = out["runs"]
    assert done["state"] == "done" and done_long["state"] == "done", out

    waveform, rate = sf.read(wav, dtype="float32")
    assert rate == SAMPLE_RATE
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert np.array_equal(waveform, clip.astype(np.float32))
    [logits], [expected] = session.run(["logits", "probs"], {"waveform": waveform[None, :]})
    labels = json.loads({p.key: p.value for p in onnx.load(str(model)).metadata_props}["labels"])
    shown = np.asarray(done["probs"])
    err = float(np.abs(shown - expected).max())
    logits_err = float(np.abs(np.asarray(done["logits"]) - logits).max())
    print(f"\nscreenshot: {screenshot}")
    print(f"page start -> model ready {out['loadMs']:.0f} ms; page start -> first result {done['resultMs']:.0f} ms "
          f"(inference {done['inferMs']:.1f} ms; node wall clock goto -> result {done['wallMs']} ms); "
          f"max |diff| probs {err:.2e}, logits {logits_err:.2e}")
    assert done["labels"] == labels
    assert err <= 1e-4, (shown, expected)
    assert logits_err <= 1e-3, (done["logits"], logits)
    assert sorted(expected)[-2] > 0.1  # a real second choice: the check is not one-hot vs one-hot
    assert done["predicted"] == labels[int(expected.argmax())]
    assert screenshot.stat().st_size > 0

    # Stereo, longer than one window: channels averaged and windows as the Python runtime does.
    windows = list(iter_windows(long))
    assert len(windows) == 2
    expected_long = np.mean([session.run(["probs"], {"waveform": w[None, :]})[0][0] for w in windows], axis=0)
    assert np.abs(np.asarray(done_long["probs"]) - expected_long).max() <= 1e-4, (done_long["probs"], expected_long)

    assert too_short["state"] == "error" and "too short" in too_short["error"], too_short
    assert not [m for m in out["console"] if m.startswith(("error", "pageerror"))], out["console"]


def test_missing_model_shows_error(server, tmp_path):
    base_url, _ = server
    proc = subprocess.run(
        [NODE, str(SCRIPT), f"{base_url}/index.html?model=nowhere.onnx", str(tmp_path / "err.png"), "unused.wav"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pageState"] == "error" and "HTTP 404" in out["error"], out

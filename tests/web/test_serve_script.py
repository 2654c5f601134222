"""examples/web/serve.py: the example page served with (and, asked, without) the cross-origin
isolation headers under which onnxruntime-web runs threaded. Needs no browser."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

import pytest

from tests.shared_data import REPO

SERVE = REPO / "examples" / "web" / "serve.py"
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


@pytest.mark.parametrize("flags", [[], ["--no-isolation"]])
def test_serve_script_sends_isolation_headers(flags):
    proc = subprocess.Popen([sys.executable, str(SERVE), "--port", "0", *flags], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://\S+/", line).group(0)
        with urllib.request.urlopen(url + "index.html", timeout=30) as response:
            headers, body = response.headers, response.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert '<main id="app"' in body
    if flags:
        assert "NOT cross-origin isolated" in line and not any(name in headers for name in ISOLATION)
    else:
        assert "cross-origin isolated" in line and {name: headers[name] for name in ISOLATION} == ISOLATION

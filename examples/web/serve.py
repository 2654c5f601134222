"""Serves this folder (the example page) over HTTP with the cross-origin isolation headers.

onnxruntime-web runs its WebAssembly kernels on several threads only in a cross-origin isolated
page (``self.crossOriginIsolated``: SharedArrayBuffer), which takes two response headers on the
page and everything it loads::

    Cross-Origin-Opener-Policy: same-origin
    Cross-Origin-Embedder-Policy: require-corp

``python -m http.server`` sends neither: the page then runs on one thread (and says so).
Usage, standard library only::

    python serve.py [--port 8000] [--bind 127.0.0.1] [--no-isolation]
"""

from __future__ import annotations

import argparse
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
HERE = Path(__file__).resolve().parent


class Handler(SimpleHTTPRequestHandler):
    """Static files, with :data:`ISOLATION_HEADERS` on every response when ``isolate``."""

    isolate: ClassVar[bool] = True
    extensions_map: ClassVar[dict[str, str]] = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                                                ".wasm": "application/wasm"}

    def end_headers(self) -> None:
        if self.isolate:
            for name, value in ISOLATION_HEADERS.items():
                self.send_header(name, value)
        super().end_headers()


def make_server(directory: Path, port: int = 0, bind: str = "127.0.0.1", isolate: bool = True,
                handler: type[Handler] = Handler) -> ThreadingHTTPServer:
    """An HTTP server of ``directory`` (port 0: a free one); ``isolate``: send the COOP/COEP headers."""
    handler = type("IsolatedHandler" if isolate else "PlainHandler", (handler,), {"isolate": isolate})
    return ThreadingHTTPServer((bind, port), partial(handler, directory=str(directory)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--no-isolation", action="store_true", help="omit COOP/COEP (the page then runs on one thread)")
    args = parser.parse_args()
    httpd = make_server(HERE, args.port, args.bind, not args.no_isolation)
    print(f"serving {HERE} at http://{args.bind}:{httpd.server_address[1]}/ "
          f"({'cross-origin isolated' if not args.no_isolation else 'NOT cross-origin isolated: one thread'}); Ctrl-C stops", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()

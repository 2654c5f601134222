"""Classify audio through a Triton server: ``asc-serve`` or Triton serving the repository that
``asc-export --format triton`` writes (both follow :mod:`asc_deploy.triton_model`).

:class:`TritonClassifier` has the interface of :class:`~asc_deploy.runtime.Classifier` that
``asc-predict`` uses (``labels``, ``predict``): files are read and cut into 10 s windows here
exactly as the local runtime does, the windows go to the server (consecutive windows of one
length in one request, up to the model's ``max_batch_size``), and their probabilities are
averaged here, so a file gets the same probabilities as local prediction with the same model.

URLs: ``http://host:port`` (Triton's HTTP/REST port, the default scheme) or ``grpc://host:port``.
Every call waits at most ``timeout_s`` seconds; a server that is down, dies or does not answer
in time raises :class:`~asc_deploy.errors.AscError` naming the URL. One instance per thread
(tritonclient's clients are not thread-safe). Needs tritonclient: the ``client`` extra.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import numpy as np

from asc_deploy.audio import iter_windows, split_windows, validate_waveform
from asc_deploy.errors import AscError
from asc_deploy.extras import require_extras
from asc_deploy.labels import CLIP_SAMPLES
from asc_deploy.metadata import INPUT_WAVEFORM, OUTPUT_PROBS
from asc_deploy.runtime import Prediction, predict_windows
from asc_deploy.triton_model import LABELS_PARAMETER, MODEL_NAME

CLIENT_EXTRA = "client"
SCHEMES = ("http", "grpc")
DEFAULT_TIMEOUT_S = 60.0


def _tritonclient(scheme: str) -> ModuleType:
    require_extras("the Triton client", CLIENT_EXTRA)
    if scheme == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def parse_url(url: str) -> tuple[str, str]:
    """``(scheme, "host:port")`` of a server URL; a URL without a scheme is HTTP."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in SCHEMES:
        raise AscError(f"bad server URL {url!r}: the scheme must be one of {', '.join(SCHEMES)}")
    try:
        port = parts.port
    except ValueError as err:
        raise AscError(f"bad server URL {url!r}: {err}") from err
    if not parts.hostname or port is None or parts.path not in ("", "/"):
        raise AscError(f"bad server URL {url!r}: expected {'|'.join(SCHEMES)}://host:port")
    return parts.scheme, parts.netloc


class TritonClassifier:
    """Acoustic scene classifier whose model runs on a Triton server.

    Args:
        url: ``http://host:port`` or ``grpc://host:port`` (see the module docstring).
        model_name: the served model.
        timeout_s: most seconds any one call to the server may take.
        hop_seconds: hop between the 10 s windows of long files (as :class:`Classifier`).
        windows_per_request: most windows per request (also capped by the model's max_batch_size).
    """

    def __init__(self, url: str, model_name: str = MODEL_NAME, timeout_s: float = DEFAULT_TIMEOUT_S,
                 hop_seconds: float = 10.0, windows_per_request: int = 8) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if windows_per_request < 1:
            raise ValueError(f"windows_per_request must be >= 1, got {windows_per_request}")
        self.url, self.model_name, self.timeout_s, self.hop_seconds = url, model_name, timeout_s, hop_seconds
        self._scheme, address = parse_url(url)
        self._tc = _tritonclient(self._scheme)
        from tritonclient.utils import InferenceServerException

        # What a failing call raises: Triton's errors, refused/reset connections and timeouts
        # (OSError), a connection the HTTP server closed mid-response (geventhttpclient's
        # HTTPConnectionClosed is an http.client.HTTPException); gRPC reports all of them as
        # InferenceServerException.
        self._errors = (InferenceServerException, OSError, http.client.HTTPException)
        if self._scheme == "grpc":
            self._client = self._tc.InferenceServerClient(address)
        else:
            self._client = self._tc.InferenceServerClient(address, connection_timeout=timeout_s, network_timeout=timeout_s)
        try:
            config = self._call(self._model_config)
        except BaseException:
            self.close()
            raise
        self.labels, self.max_batch_size = self._read_config(config)
        self.windows_per_request = min(windows_per_request, self.max_batch_size)

    def _call(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202 (any client call)
        try:
            return fn(*args, **kwargs)
        except self._errors as err:
            message = err.message() if hasattr(err, "message") and callable(err.message) else str(err)
            raise AscError(f"server {self.url}: {message or type(err).__name__}") from err

    def _timeout_kwargs(self) -> dict[str, float]:
        return {"client_timeout": self.timeout_s} if self._scheme == "grpc" else {}

    def _model_config(self) -> dict:
        """The served model's config as a dict with protobuf's JSON field names (either protocol)."""
        if not self._client.is_model_ready(self.model_name, **self._timeout_kwargs()):
            raise AscError(f"server {self.url}: model {self.model_name!r} is not ready")
        if self._scheme == "grpc":
            return self._client.get_model_config(self.model_name, as_json=True, **self._timeout_kwargs())["config"]
        return self._client.get_model_config(self.model_name)

    def _read_config(self, config: dict) -> tuple[tuple[str, ...], int]:
        """(labels, max_batch_size) from the model config; :class:`AscError` for another model."""
        params = config.get("parameters", {})
        inputs = [i.get("name") for i in config.get("input", [])]
        outputs = [o.get("name") for o in config.get("output", [])]
        try:
            labels = tuple(json.loads(params[LABELS_PARAMETER].get("string_value", params[LABELS_PARAMETER].get("stringValue"))))
        except (KeyError, TypeError, ValueError) as err:
            raise AscError(f"server {self.url}: model {self.model_name!r} has no JSON parameter {LABELS_PARAMETER!r} "
                           f"(not served by asc-serve or asc-export --format triton)") from err
        if inputs != [INPUT_WAVEFORM] or OUTPUT_PROBS not in outputs:
            raise AscError(f"server {self.url}: model {self.model_name!r} has inputs {inputs} and outputs {outputs}, "
                           f"need input {INPUT_WAVEFORM!r} and output {OUTPUT_PROBS!r}")
        max_batch = int(config.get("max_batch_size", config.get("maxBatchSize", 0)))
        return labels, max(1, max_batch)

    def probabilities(self, waveforms: np.ndarray) -> np.ndarray:
        """(batch, samples) float32 waveforms at 44.1 kHz, one length -> (batch, classes)
        probabilities, in requests of at most ``max_batch_size`` clips."""
        waveforms = np.ascontiguousarray(waveforms, dtype=np.float32)
        parts = []
        for start in range(0, len(waveforms), self.max_batch_size):
            batch = waveforms[start : start + self.max_batch_size]
            inp = self._tc.InferInput(INPUT_WAVEFORM, list(batch.shape), "FP32")
            inp.set_data_from_numpy(batch)
            out = self._tc.InferRequestedOutput(OUTPUT_PROBS)
            result = self._call(self._client.infer, self.model_name, [inp], outputs=[out], **self._timeout_kwargs())
            parts.append(result.as_numpy(OUTPUT_PROBS))
        return np.concatenate(parts)

    def predict(self, source: str | Path | np.ndarray) -> Prediction:
        """Classify an audio file or a waveform array as :meth:`Classifier.predict` does."""
        if isinstance(source, np.ndarray):
            windows, name = split_windows(validate_waveform(source), hop_seconds=self.hop_seconds), "<array>"
        else:
            windows, name = iter_windows(source, hop_seconds=self.hop_seconds), source
        try:
            return predict_windows(windows, self.probabilities, self.labels, name, self.windows_per_request * CLIP_SAMPLES)
        except AscError as err:
            if err.path is None:  # a server error: say which file it was for
                raise AscError(str(err), name) from err
            raise

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TritonClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

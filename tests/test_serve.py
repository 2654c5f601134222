"""asc-serve for real: a Triton server (PyTriton) started on free loopback ports, queried with
asc_deploy.client and raw tritonclient, killed and restarted."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from asc_deploy.client import TritonClassifier
from asc_deploy.errors import AscError
from asc_deploy.predict_cli import main as predict_main
from asc_deploy.runtime import Classifier
from asc_deploy.serve_process import ServerProcess
from asc_deploy.triton_model import MODEL_NAME

pytest.importorskip("pytriton", reason="the 'serve' extra (nvidia-pytriton) is not installed")
http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOLERANCE = 1e-6  # fp32 served against local


def noise(seconds: float, seed: int, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.3, 0.3, (batch, round(44_100 * seconds))).astype(np.float32)


@pytest.fixture(scope="module")
def local(random_model) -> Classifier:
    return Classifier(random_model)


@pytest.fixture(scope="module")
def server(random_model, tmp_path_factory):
    """One asc-serve for the module (single-pass random model); stopped with SIGTERM at the end."""
    proc = ServerProcess(random_model, tmp_path_factory.mktemp("serve") / "serve.log").start()
    yield proc
    proc.stop()


def raw_infer(url: str, waveforms: np.ndarray, dtype: str = "FP32", **kwargs) -> dict[str, np.ndarray]:
    with http.InferenceServerClient(url.removeprefix("http://"), network_timeout=60) as client:
        inp = http.InferInput("waveform", list(waveforms.shape), dtype)
        inp.set_data_from_numpy(waveforms)
        result = client.infer(MODEL_NAME, [inp], **kwargs)
        return {name: result.as_numpy(name) for name in ("logits", "probs")}


def model_stats(url: str) -> tuple[int, int]:
    """(inference_count, execution_count) of the served model, from Triton's statistics."""
    with urllib.request.urlopen(f"{url}/v2/models/{MODEL_NAME}/stats", timeout=10) as response:
        stats = json.load(response)["model_stats"][0]
    return stats["inference_count"], stats["execution_count"]


def test_health_config_and_metrics(server, local):
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL_NAME}/ready"):
        with urllib.request.urlopen(f"{server.http_url}{path}", timeout=10) as response:
            assert response.status == 200, path
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{MODEL_NAME}/config", timeout=10) as response:
        config = json.load(response)
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("waveform", "TYPE_FP32", [-1])]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("logits", "TYPE_FP32", [10]), ("probs", "TYPE_FP32", [10])]
    assert config["max_batch_size"] == 32 and config["dynamic_batching"]["preferred_batch_size"] == [16, 32]
    assert json.loads(config["parameters"]["labels"]["string_value"]) == list(local.labels)
    raw_infer(server.http_url, noise(1.5, 0))
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    count = [line for line in metrics.splitlines() if line.startswith("nv_inference_count{") and MODEL_NAME in line]
    assert count and float(count[0].split()[-1]) >= 1


@pytest.mark.parametrize("seconds", [10.0, 3.3, 1.0])
def test_served_outputs_equal_local(server, local, seconds):
    waveforms = noise(seconds, seed=int(seconds * 10), batch=3)
    served = raw_infer(server.http_url, waveforms)
    expected = local.infer(waveforms)
    for name in ("logits", "probs"):
        assert served[name].dtype == np.float32 and served[name].shape == (3, 10)
        np.testing.assert_allclose(served[name], expected[name], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_client_multi_window_file_matches_local(server, local, tmp_path, scheme):
    path = tmp_path / "long.wav"
    sf.write(path, noise(25.5, 7)[0], 44_100, subtype="FLOAT")  # windows 0-10, 10-20 and the last 15.5-25.5 s
    with TritonClassifier(server.http_url if scheme == "http" else server.grpc_url) as client:
        assert client.labels == local.labels
        served = client.predict(path)
    expected = local.predict(path)
    assert served.windows == expected.windows == 3
    assert served.label == expected.label
    np.testing.assert_allclose(served.probs, expected.probs, rtol=0, atol=TOLERANCE)


def test_predict_cli_server_writes_the_local_csv(server, random_model, tmp_path):
    files = []
    for i, seconds in enumerate((10.0, 25.5, 2.0)):
        files.append(str(tmp_path / f"clip{i}.wav"))
        sf.write(files[-1], noise(seconds, 20 + i)[0], 44_100, subtype="FLOAT")
    files.append(str(tmp_path / "missing.wav"))
    runner = CliRunner()
    local = runner.invoke(predict_main, ["--model", str(random_model), *files, "-o", str(tmp_path / "local.csv")])
    served = runner.invoke(predict_main, ["--server", server.grpc_url, *files, "-o", str(tmp_path / "served.csv")])
    assert local.exit_code == served.exit_code == 1  # the missing file
    assert (tmp_path / "served.csv").read_text() == (tmp_path / "local.csv").read_text()
    assert "no such file" in (tmp_path / "served.csv").read_text()


def test_32_concurrent_clients_are_batched(server, local):
    clients, requests = 32, 1
    waveforms = noise(2.0, 99, batch=clients)  # one length: Triton may batch them all
    expected = local.probabilities(waveforms)
    before = model_stats(server.http_url)
    barrier, errors, results = threading.Barrier(clients), [], {}

    def run(i: int) -> None:
        try:
            with TritonClassifier(server.http_url, timeout_s=120) as client:
                barrier.wait()
                for _ in range(requests):
                    results.setdefault(i, []).append(client.probabilities(waveforms[i : i + 1])[0])
        except Exception as err:  # noqa: BLE001 (every failure counts)
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and len(results) == clients
    for i, probs in results.items():
        for p in probs:
            np.testing.assert_allclose(p, expected[i], rtol=0, atol=TOLERANCE)
    after = model_stats(server.http_url)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == clients * requests
    assert executions < inferences, f"no batching: {inferences} inferences in {executions} executions"


def test_bad_requests_refused_and_server_still_serves(server, local):
    good = noise(2.0, 3)
    with pytest.raises(InferenceServerException, match="(?i)data-type|datatype|FP64"):
        raw_infer(server.http_url, good.astype(np.float64), dtype="FP64")
    with pytest.raises(InferenceServerException, match="(?i)shape|dims"):
        raw_infer(server.http_url, good.reshape(1, 2, -1))
    with pytest.raises(InferenceServerException, match="too short"):
        raw_infer(server.http_url, noise(0.01, 4))
    np.testing.assert_allclose(raw_infer(server.http_url, good)["probs"], local.probabilities(good), rtol=0, atol=TOLERANCE)


def test_tta_model_killed_and_restarted(random_checkpoint, tmp_path):
    """A TTA model served; SIGKILL to the server's group under load: every client's call returns
    (an error naming the server) within its timeout; restarted on the same ports it serves the
    same probabilities; SIGTERM then stops it cleanly (exit 0, no process left)."""
    from asc_deploy.export.onnx_export import export_onnx

    model = export_onnx(random_checkpoint, tmp_path / "tta.onnx", "fp32", True)
    local = Classifier(model, tta_passes=4)
    waveforms = noise(3.0, 11, batch=2)
    proc = ServerProcess(model, tmp_path / "serve.log", args=("--tta-passes", "4")).start()
    try:
        with TritonClassifier(proc.grpc_url) as client:
            assert client.labels == local.labels
            np.testing.assert_allclose(client.probabilities(waveforms), local.probabilities(waveforms), rtol=0, atol=TOLERANCE)

        timeout_s, clients = 5.0, 8
        outcome: dict[int, tuple[str, float]] = {}

        def hammer(i: int) -> None:
            url = proc.http_url if i % 2 else proc.grpc_url
            try:
                with TritonClassifier(url, timeout_s=timeout_s) as client:
                    while True:
                        start = time.monotonic()
                        try:
                            client.probabilities(waveforms[:1])
                        except AscError as err:
                            outcome[i] = (str(err), time.monotonic() - start)
                            return
            except AscError as err:  # the server was already gone when the client connected
                outcome[i] = (str(err), 0.0)

        threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        proc.kill()
        for t in threads:
            t.join(timeout_s + 5)
        assert not any(t.is_alive() for t in threads), "a client hung past its timeout"
        assert sorted(outcome) == list(range(clients))
        for message, waited in outcome.values():
            assert message.startswith("server ") and waited <= timeout_s + 1

        proc.start()  # same ports
        with TritonClassifier(proc.http_url) as client:
            np.testing.assert_allclose(client.probabilities(waveforms), local.probabilities(waveforms), rtol=0, atol=TOLERANCE)
        started = time.monotonic()
        assert proc.stop(timeout_s=30) == 0  # asc-serve, tritonserver, the stub and helpers all ended
        print(f"stopped in {time.monotonic() - started:.1f} s")
        assert "asc-serve: stopped" in proc.log_tail()
    finally:
        if proc.process.poll() is None or proc.group_alive():
            proc.kill()

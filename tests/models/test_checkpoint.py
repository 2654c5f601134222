import pickle

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch

from asc_deploy.errors import AscError
from asc_deploy.models import Cnn6, build_model, load_checkpoint
from tests.shared_data import checkpoint_path, needs_shared


@needs_shared
def test_sp4asc_checkpoint_loads_with_its_config():
    checkpoint = load_checkpoint(checkpoint_path("mixup"))
    assert checkpoint.source == "sp4asc"
    assert checkpoint.config["specAugment"] == [128, 2, 16, 2]
    assert len(checkpoint.sha256) == 64
    assert not build_model(checkpoint).training


def test_own_and_bare_state_dict_formats(tmp_path):
    model = Cnn6()
    torch.save({"format": "asc-deploy", "net": model.state_dict(), "config": {"spec_aug": [8, 2, 8, 2]}}, tmp_path / "own.pth")
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    own, bare = load_checkpoint(tmp_path / "own.pth"), load_checkpoint(tmp_path / "bare.pth")
    assert (own.source, bare.source) == ("asc-deploy", "state_dict")
    for checkpoint in (own, bare):
        loaded = build_model(checkpoint)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_wrong_shapes_and_keys_are_named(tmp_path):
    state = Cnn6().state_dict()
    state["fc2.weight"] = torch.zeros(5, 128)
    del state["conv3.sp_conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save({"net": state}, tmp_path / "bad.pth")
    with pytest.raises(AscError) as err:
        build_model(load_checkpoint(tmp_path / "bad.pth"))
    message = str(err.value)
    assert str(tmp_path / "bad.pth") in message
    assert "missing conv3.sp_conv1.weight" in message
    assert "unexpected extra.weight" in message
    assert "fc2.weight has shape (5, 128), expected (10, 128)" in message


@pytest.mark.parametrize("content, problem", [
    (b"not a checkpoint at all", "not a PyTorch checkpoint"),
    (b"", "not a PyTorch checkpoint"),
])
def test_non_checkpoint_files(tmp_path, content, problem):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(AscError, match=problem) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def _tiny_onnx(path):
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    x, y = (onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "xy")
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y])), str(path))


@pytest.mark.parametrize("make, hint", [
    (_tiny_onnx, "it looks like an ONNX model: pass the PyTorch checkpoint (.pth) it was exported from"),
    (lambda p: sf.write(p, np.zeros(4410, np.float32), 44100, format="WAV"), "it looks like an audio file"),
    (lambda p: p.write_bytes(pickle.dumps({"net": {}}, protocol=2)[:-3]), None),  # a pickle cut short
])
def test_foreign_files_are_named_in_our_words(tmp_path, make, hint):
    """Never torch's internal "Please file an issue ..." text; a hint when the file is recognisable."""
    path = tmp_path / "model.pth"
    make(path)
    with pytest.raises(AscError, match="not a PyTorch checkpoint") as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "Please file an issue" not in message and "\n" not in message
    if hint:
        assert message.endswith(hint)


def test_missing_file_and_wrong_payload(tmp_path):
    with pytest.raises(AscError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pth")
    torch.save({"weights": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(AscError, match="expected a dict with a 'net'"):
        load_checkpoint(tmp_path / "list.pth")


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch ran-code-marker",))


def test_pickle_that_runs_code_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"net": Cnn6().state_dict(), "payload": _RunsCode()}, path)
    with pytest.raises(AscError, match="refused") as err:
        load_checkpoint(path)
    assert not (tmp_path / "ran-code-marker").exists()
    assert str(path) in str(err.value)
    with pytest.raises(pickle.UnpicklingError):  # the plain pickle module would have run it
        torch.load(path, weights_only=True)

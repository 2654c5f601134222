"""asc-train: losses, the training step against SP4ASC's, checkpoints, kill-and-resume, CLI errors.

Runs on a tiny synthetic data set (1 s clips, a few dozen of them) for 1-3 epochs.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

from asc_deploy.errors import AscError
from asc_deploy.labels import NUM_CLASSES
from asc_deploy.models import Cnn6, LogMelFrontend, build_model, load_checkpoint
from asc_deploy.models.cnn6 import BlockForm
from asc_deploy.train.cli import main
from asc_deploy.train.config import TrainConfig, config_to_dict, load_config
from asc_deploy.train.synth import make_dataset
from asc_deploy.train.trainer import RunLog, autocast_dtype, focal_loss, mixup, predict, train, train_step
from tests.shared_data import checkpoint_path, needs_shared

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {  # every augmentation on, so that resuming must replay every random draw
    "epochs": 3, "batch_size": 8, "lr": 3.0e-3, "eta_min": 1.0e-4, "weight_decay": 1.0e-5, "dropout": 0.2,
    "spec_aug": [8, 1, 16, 1], "mixup_alpha": 0.2, "loss": "focal", "focal_gamma": 1.0, "seed": 3, "num_workers": 0, "eval_every": 1,
}


def make_tiny_data(folder: Path) -> Path:
    """A synthetic set of 1 s clips: every 4th training clip (38, every class) and the 90
    evaluate clips (every class and device)."""
    root = make_dataset(folder, clips_per_class_device=1, seconds=1.0, seed=0)
    csv = root / "evaluation_setup" / "fold1_train.csv"
    header, *rows = csv.read_text().splitlines()
    csv.write_text("\n".join([header, *rows[::4]]) + "\n")
    return root


def write_config(folder: Path, **changes: object) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def run_cli(*args: object) -> subprocess.Popen:
    """``python -m asc_deploy.train.cli ARGS`` in a subprocess (one torch thread), output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "asc_deploy.train.cli", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def uninterrupted(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT folder of a complete 3-epoch CLI run of the TINY config."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    process = run_cli("--config", write_config(folder), "--data", tiny_data, "--out", folder / "out", "--device", "cpu")
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    (folder / "output.txt").write_text(output)
    return folder / "out"


def metric_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# --- losses and mixup ---------------------------------------------------------------------

def test_focal_loss_with_gamma_0_is_cross_entropy() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [-2.0, 4.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    expected = F.cross_entropy(logits, labels)
    assert torch.allclose(focal_loss(logits, F.one_hot(labels, 3).float(), 0.0), expected, atol=1e-7)


def test_focal_loss_value() -> None:
    # p = softmax([0, ln 3]) = [0.25, 0.75]; row 0 is class 1, row 1 class 0: FL = mean of -(1 - p)^gamma ln p.
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    for gamma in (1.0, 2.0):
        expected = (-(0.25**gamma) * math.log(0.75) - 0.75**gamma * math.log(0.25)) / 2
        assert focal_loss(logits, targets, gamma).item() == pytest.approx(expected, rel=1e-6)


def test_mixup_values() -> None:
    logmel = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4)
    targets = F.one_hot(torch.tensor([0, 2]), 3).float()
    swap = torch.tensor([1, 0])
    same_x, same_y = mixup(logmel, targets, 1.0, swap)
    assert torch.equal(same_x, logmel) and torch.equal(same_y, targets)
    mixed_x, mixed_y = mixup(logmel, targets, 0.25, swap)
    assert torch.allclose(mixed_x[0], 0.25 * logmel[0] + 0.75 * logmel[1])
    assert torch.allclose(mixed_y, torch.tensor([[0.25, 0.0, 0.75], [0.75, 0.0, 0.25]]))


def tiny_setup(config: TrainConfig, seed: int = 0, block_form: BlockForm = BlockForm.CROSS) -> tuple[Cnn6, torch.optim.Optimizer]:
    """asc-train's model (CROSS form unless ``block_form``) and optimiser."""
    torch.manual_seed(seed)
    model = Cnn6(dropout=config.dropout, spec_aug=config.spec_aug, block_form=block_form)
    return model, torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def random_batches(count: int, batch: int = 4, samples: int = 44_100) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(0.1 * torch.randn(batch, samples, generator=generator), torch.randint(0, NUM_CLASSES, (batch,), generator=generator)) for _ in range(count)]


def test_mixup_with_lambda_1_is_no_mixup(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = dataclasses.replace(load_config("demo"), spec_aug=None, dropout=0.0, mixup_alpha=None)
    frontend, scaler = LogMelFrontend(), torch.amp.GradScaler("cpu", enabled=False)
    monkeypatch.setattr(torch.distributions.Beta, "sample", lambda self, shape=torch.Size(): torch.tensor(1.0))
    runs = []
    for config in (plain, dataclasses.replace(plain, mixup_alpha=0.2)):
        model, optimizer = tiny_setup(config)
        runs.append(([train_step(model, optimizer, scaler, frontend(w), y, config)[0].item() for w, y in random_batches(3)], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


# --- parity with SP4ASC's training step ---------------------------------------------------

def test_train_step_matches_sp4asc_step() -> None:
    """No augmentation, same initial weights and batches: 10 steps give the same losses as the
    plain SP4ASC step (log-mel -> Cnn6 -> cross-entropy on one-hot targets -> AdamW), both in
    SP4ASC's block form (tests/models/test_cnn6.py shows the CROSS form's loss and gradients
    equal to it; over 10 AdamW steps float32 rounding differences grow to ~1e-5)."""
    config = dataclasses.replace(load_config("ce"), spec_aug=None, mixup_alpha=None, dropout=0.0, mixed_precision="off")
    model, optimizer = tiny_setup(config, block_form=BlockForm.SP4ASC)
    reference = copy.deepcopy(model)
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=1e-5)
    frontend, scaler = LogMelFrontend(), torch.amp.GradScaler("cpu", enabled=False)
    ours, theirs = [], []
    for waveform, labels in random_batches(10):
        ours.append(train_step(model, optimizer, scaler, frontend(waveform), labels, config)[0].item())
        logits = reference(frontend(waveform))
        loss = F.cross_entropy(logits, F.one_hot(labels, NUM_CLASSES).float())
        reference_optimizer.zero_grad()
        loss.backward()
        reference_optimizer.step()
        theirs.append(loss.item())
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-5, (ours, theirs)
    assert ours[-1] < ours[0]
    for key, value in reference.state_dict().items():
        assert torch.allclose(model.state_dict()[key].float(), value.float(), atol=1e-5), key


def test_predict_equals_the_training_model_in_eval_mode() -> None:
    """Evaluation runs the folded export form (channels-last): the training model's probabilities
    in eval mode, to float32 rounding, and the model is left as it was (training mode, weights)."""
    torch.manual_seed(0)
    model = Cnn6()
    with torch.no_grad():  # running statistics and BatchNorm parameters away from their defaults
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.2, 0.2)
    before = copy.deepcopy(model.state_dict())
    batches = [(torch.randn(3, 1, 44, 256), torch.zeros(3)), (torch.randn(2, 1, 44, 256), torch.zeros(2))]
    probs = predict(model, batches, torch.device("cpu"))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        expected = torch.cat([torch.softmax(model(x), dim=-1) for x, _ in batches]).double().numpy()
    assert probs.shape == (5, NUM_CLASSES) and abs(probs - expected).max() < 1e-7  # measured 7.5e-9


def test_evaluation_batches_change_nothing_but_the_batch_size(tiny_data: Path, tmp_path: Path) -> None:
    """About 100 s of audio per evaluation batch, never fewer clips than a training batch; the
    probabilities of a split scored in those batches are those of the training batches (to float32
    rounding: the log-mel cache and oneDNN's kernels see other batch sizes)."""
    from asc_deploy.train import trainer
    from asc_deploy.train.dataset import SceneDataset, read_split

    config = dataclasses.replace(load_config(write_config(tmp_path)), batch_size=4)
    assert [trainer.evaluation_batch_size(config, round(s * 44_100)) for s in (1, 3, 10, 30)] == [100, 33, 10, 4]
    dataset = SceneDataset(read_split(tiny_data, "evaluate"), expected_samples=44_100)
    frontend, cpu = LogMelFrontend(), torch.device("cpu")
    batches = trainer.LogMelBatches(dataset, frontend, config, cpu, batch_size=trainer.evaluation_batch_size(config, 44_100))
    assert len(dataset) > 4 and len(batches) == 1
    torch.manual_seed(0)
    model = Cnn6()
    difference = predict(model, batches, cpu) - predict(model, trainer.LogMelBatches(dataset, frontend, config, cpu), cpu)
    assert np.abs(difference).max() <= 1e-7


def test_autocast_dtype_follows_the_config_and_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert (autocast_dtype(cpu, "auto"), autocast_dtype(cpu, "off")) == (torch.bfloat16, None)
    assert (autocast_dtype(cuda, "auto"), autocast_dtype(cuda, "off")) == (torch.float16, None)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert autocast_dtype(cpu, "auto") is None


def test_bf16_steps_follow_the_float32_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CROSS form, same initial weights and batches, 10 AdamW steps under bfloat16 autocast
    (forced, whatever this CPU has) and in float32: the losses stay within 2 % of each other
    (measured 0.5 % worst, at step 8) and both fall."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    frontend, scaler = LogMelFrontend(), torch.amp.GradScaler("cpu", enabled=False)
    losses = {}
    for precision in ("auto", "off"):
        config = dataclasses.replace(load_config("ce"), spec_aug=None, mixup_alpha=None, dropout=0.0, mixed_precision=precision)
        model, optimizer = tiny_setup(config, block_form=BlockForm.CROSS)
        losses[precision] = [train_step(model, optimizer, scaler, frontend(w), labels, config)[0].item() for w, labels in random_batches(10)]
    assert max(abs(a / b - 1) for a, b in zip(losses["auto"], losses["off"])) <= 0.02, losses
    assert losses["auto"][-1] < losses["auto"][0] and losses["off"][-1] < losses["off"][0]


# --- runs, checkpoints, resume ------------------------------------------------------------

def test_run_writes_checkpoints_logs_and_table(uninterrupted: Path) -> None:
    lines = metric_lines(uninterrupted)
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert all(math.isfinite(line["train_loss"]) and 0 <= line["eval_accuracy"] <= 1 for line in lines)
    for name in ("last.pth", "best.pth"):
        payload = torch.load(uninterrupted / name, weights_only=True)
        assert payload["format"] == "asc-deploy" and payload["config"] == {**TINY, "holdout": 0.0, "mixed_precision": "auto"}  # defaults are recorded
        assert set(payload) >= {"net", "epoch", "optim", "scheduler", "scaler", "rng", "best_metric"}
        build_model(load_checkpoint(uninterrupted / name))
    assert torch.load(uninterrupted / "last.pth", weights_only=True)["epoch"] == 3
    assert list((uninterrupted / "tensorboard").glob("events.out.tfevents.*"))
    output = (uninterrupted.parent / "output.txt").read_text()
    assert "overall" in output and all(f"\n{device} " in output for device in ("a", "b", "c", "s1", "s6"))
    groups = {line.split(" (")[0]: line.split()[-3] for line in output.splitlines() if "in train)" in line}
    assert groups == {"seen": "60", "unseen": "30"}  # clips: a, b, c, s1-s3 seen in training; s4-s6 not


def test_killed_and_resumed_run_ends_with_the_same_weights(uninterrupted: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("--config", write_config(tmp_path), "--data", tiny_data, "--out", out, "--device", "cpu")
    process = run_cli(*args)
    deadline = time.monotonic() + 300
    while not (out / "last.pth").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 2
    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed_at = torch.load(out / "last.pth", weights_only=True)["epoch"]
    assert killed_at < 3, "the run finished before it could be killed"

    resumed = run_cli(*args, "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    expected, got = (torch.load(folder / "last.pth", weights_only=True) for folder in (uninterrupted, out))
    assert got["epoch"] == 3
    for key, value in expected["net"].items():
        assert torch.equal(got["net"][key], value), key
    drop_time = lambda lines: [{k: v for k, v in line.items() if k != "seconds"} for line in lines]  # noqa: E731
    assert drop_time(metric_lines(out)) == drop_time(metric_lines(uninterrupted))


def test_disk_full_keeps_the_previous_checkpoint(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = torch.save

    def save(payload: dict, path: Path) -> None:
        if payload["epoch"] >= 2:
            Path(path).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(payload, path)

    monkeypatch.setattr(torch, "save", save)
    config = dataclasses.replace(load_config(write_config(tmp_path)), epochs=2)
    with pytest.raises(AscError) as info:
        train(config, tiny_data, tmp_path / "out", "cpu")
    assert str(tmp_path / "out" / "last.pth") in str(info.value) and "No space left on device" in str(info.value)
    assert load_checkpoint(tmp_path / "out" / "last.pth").config == config_to_dict(config)
    assert torch.load(tmp_path / "out" / "last.pth", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in (tmp_path / "out").glob("*.pth*")) == ["best.pth", "last.pth"]


def test_missing_tensorboard_only_disables_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')  # epoch 2 and a cut line: after the checkpoint
    log = RunLog(tmp_path, completed=1)
    log.write({"epoch": 2, "train_loss": 1.5, "eval_logloss": None})
    log.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TensorBoard logging is off" in err
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "nosuch", "--data", "{data}", "--out", "{tmp}/o"], "nosuch: unknown config"),
        (["--config", "demo", "--data", "{tmp}/missing", "--out", "{tmp}/o"], "missing: data folder not found"),
        (["--config", "demo", "--data", "{data}", "--out", "{tmp}/o", "--resume"], "last.pth: nothing to resume"),
        (["--config", "{tmp}/tiny.yaml", "--data", "{data}", "--out", "{tmp}/run", "--seed", "4", "--resume"], "cannot resume with a different config (seed 3 -> 4)"),
        (["--config", "demo", "--data", "{data}", "--out", "{tmp}/run"], "already holds a training run"),
    ],
)
def test_cli_errors_are_one_line(tiny_data: Path, tmp_path: Path, args: list[str], message: str) -> None:
    write_config(tmp_path)
    (tmp_path / "run").mkdir()
    torch.save({"format": "asc-deploy", "config": TINY}, tmp_path / "run" / "last.pth")
    result = CliRunner().invoke(main, [a.format(data=tiny_data, tmp=tmp_path) for a in args])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and message in result.output, result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_one_epoch_on_cuda_with_amp(tiny_data: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(load_config(write_config(tmp_path)), epochs=1)
    scores = train(config, tiny_data, tmp_path / "out", "cuda")
    assert math.isfinite(scores["logloss"])
    payload = torch.load(tmp_path / "out" / "last.pth", weights_only=True)
    assert payload["scaler"]["scale"] > 0  # GradScaler was enabled
    build_model(load_checkpoint(tmp_path / "out" / "last.pth"))


def test_holdout_is_left_out_of_training_and_recorded(tiny_data: Path, tmp_path: Path) -> None:
    from asc_deploy.train.dataset import read_split
    from asc_deploy.train.holdout import holdout_split

    config = dataclasses.replace(load_config(write_config(tmp_path)), epochs=1, holdout=0.3, spec_aug=None, mixup_alpha=None)
    out = tmp_path / "out"
    train(config, tiny_data, out, "cpu")
    payload = torch.load(out / "last.pth", weights_only=True)
    split = holdout_split(read_split(tiny_data, "train"), 0.3, config.seed)
    assert payload["holdout"] == split.record() and payload["config"]["holdout"] == 0.3
    assert payload["holdout"]["train_clips"] == len(split.train) < len(read_split(tiny_data, "train"))
    assert load_checkpoint(out / "last.pth").holdout["clips"] == [c.filename for c in split.calibration]


# --- the log-mel cache and the checkpoint format ------------------------------------------

def test_cached_log_mel_batches_equal_the_streamed_ones(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same clips in the same (sampler) order and the same log-mel, whether the split's log-mel
    is cached or computed batch by batch; a split over the budget is not cached."""
    from torch.utils.data import DistributedSampler

    from asc_deploy.train import trainer
    from asc_deploy.train.dataset import SceneDataset, read_split

    config = dataclasses.replace(load_config(write_config(tmp_path)), batch_size=5)
    dataset = SceneDataset(read_split(tiny_data, "train"), expected_samples=44_100)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3)
    sampler.set_epoch(2)
    frontend = LogMelFrontend()
    cached = trainer.LogMelBatches(dataset, frontend, config, torch.device("cpu"), sampler)
    streamed = trainer.LogMelBatches(dataset, frontend, config, torch.device("cpu"), sampler, cache=False)
    assert cached.cached and not streamed.cached and len(cached) == len(streamed) == math.ceil(len(dataset) / 5)
    pairs = list(zip(cached, streamed, strict=True))
    assert [len(a[1]) for a, _ in pairs] == [5] * (len(dataset) // 5) + ([len(dataset) % 5] if len(dataset) % 5 else [])
    for (logmel, labels), (expected_logmel, expected_labels) in pairs:
        assert torch.equal(labels, expected_labels)
        assert torch.allclose(logmel, expected_logmel, rtol=0, atol=1e-4)
    first_labels = pairs[0][0][1]
    assert torch.equal(first_labels, torch.tensor([dataset.clips[i].label for i in list(sampler)[:5]]))
    monkeypatch.setattr(trainer, "CACHE_BUDGET_BYTES", 44 * 256 * 4 * len(dataset) - 1)  # one byte short
    assert not trainer.LogMelBatches(dataset, frontend, config, torch.device("cpu"), sampler).cached


@needs_shared
def test_checkpoints_load_strictly_into_sp4asc_cnn6(uninterrupted: Path) -> None:
    """asc-train trains the CROSS block form, but its checkpoints hold SP4ASC's Cnn6_60k state
    dict: the official checkpoint's keys, shapes and dtypes, loaded with strict=True."""
    official = torch.load(checkpoint_path("ce"), map_location="cpu", weights_only=True)["net"]
    for name in ("last.pth", "best.pth"):
        net = torch.load(uninterrupted / name, weights_only=True)["net"]
        assert list(net) == list(official)
        assert all(net[k].shape == official[k].shape and net[k].dtype == official[k].dtype for k in net)
        Cnn6().load_state_dict(net, strict=True)

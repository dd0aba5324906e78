"""hw2 where students run it, simulated here on Linux: Windows (no fcntl; folders that cannot be opened;
Ctrl-Break instead of SIGTERM; the code's Windows branches chosen through its one switch, hw2.runtime.WINDOWS)
and macOS's Apple GPU (MPS: the optimizer path chosen for it). Neither was tried on its hardware: these tests
run hw2's branches for them, not the platforms. Device selection with availability mocked is in
tests/test_runtime.py."""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest
import torch
from PIL import Image

import hw2.state
from hw2 import runtime
from hw2.checkpoint import Checkpoint
from hw2.modeldir import ModeldirLock, list_checkpoints
from hw2.models import ResNet
from hw2.state import make_optimizer
from hw2.train import _StopRequests, train_step
from test_import import write_published

# Run first by `python -c`: Linux made to look like Windows to hw2. filelock's Windows lock (LockFileEx) cannot
# run on Linux, so its flock lock stands in for it, imported before fcntl is hidden; SIGUSR1 stands in for
# Ctrl-Break's SIGBREAK, which Linux lacks.
WINDOWS = """
import errno, os, signal, sys
import filelock
filelock.WindowsFileLock = filelock.UnixFileLock
sys.modules["fcntl"] = sys.modules["resource"] = None  # as on Windows: nothing imported from here on may need them
signal.SIGBREAK = signal.SIGUSR1
real_open = os.open
def open_no_folder(path, flags, *args, **kwargs):
    if os.path.isdir(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    return real_open(path, flags, *args, **kwargs)
os.open = open_no_folder
from hw2 import runtime
runtime.WINDOWS = True
"""
CLI = "from hw2.cli import main; sys.exit(main(sys.argv[1:]))"
BENCH = "from hw2.bench import main; sys.exit(main(sys.argv[1:]))"
README = Path(__file__).resolve().parent.parent / "README.md"


def on_windows(*args, background=False, program=CLI):
    """`python -m hw2 ARGS` (program BENCH: `python -m hw2.bench ARGS`) under WINDOWS: the finished process, or with
    background=True the running one."""
    command = [sys.executable, "-c", WINDOWS + program, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_hw2_imports_without_fcntl():
    """Every module a command or notebook starts from, with fcntl missing from the start, as on Windows."""
    script = "import sys; sys.modules['fcntl'] = None; import hw2.cli, hw2.notebook, hw2.bench, hw2.evaluate"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_train_stop_resume_test_and_a_busy_modeldir_on_windows(cifar_dir, tmp_path):
    modeldir = tmp_path / "model"
    small = ["--resnet_size", "1", "--first_num_filters", "8", "--batch_size", "20", "--valid_size", "40",
             "--save_interval", "1", "--data_dir", cifar_dir, "--modeldir", modeldir, "--device", "cpu"]
    process = on_windows("train", *small, "--epochs", "30", background=True)
    deadline = time.time() + 120
    while not (modeldir / "model-1.ckpt").exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "model-1.ckpt never appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGUSR1)  # Ctrl-Break
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGUSR1, err
    assert "stopping after this step" in out and "--resume" in err
    stopped = list_checkpoints(modeldir)[-1]
    assert stopped.name != "model-30.ckpt" and str(stopped) in err

    run = on_windows("train", *small, "--epochs", "3", "--resume")
    assert run.returncode == 0, run.stderr
    assert f"Resuming from {stopped}" in run.stdout
    assert Checkpoint.load(modeldir / "model-3.ckpt").epoch == 3
    assert not (modeldir / ".lock").exists()

    with ModeldirLock(modeldir):  # another run, from this process
        run = on_windows("train", *small, "--epochs", "4", "--resume")
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {modeldir} is in use by another training run (PID {os.getpid()}); wait for "
                                 "it, stop it, or choose another --modeldir")
    assert not (modeldir / "model-4.ckpt").exists()

    run = on_windows("test", "--data_dir", cifar_dir, "--modeldir", modeldir)
    assert run.returncode == 0, run.stderr
    assert f"Restored model parameters from {modeldir / 'model-3.ckpt'}" in run.stdout


@pytest.mark.slow
def test_every_command_the_readme_and_docs_give_runs_on_windows(cifar_dir, tmp_path):
    """Each kind of `python -m hw2 ...` command of the README and docs/, on small data, as Windows would run it
    (train's stop and resume are the test above)."""
    text = "".join(page.read_text() for page in [README, *(README.parent / "docs").glob("*.md")])
    typed = set(re.findall(r"(?:^!?|`)python -m (hw2(?:\.bench)?)(?: ([a-z]\w*))?", text, re.M))
    modeldir, published = tmp_path / "run", tmp_path / "resnet20.th"
    small = ["--resnet_size", "1", "--first_num_filters", "8", "--batch_size", "20", "--valid_size", "40", "--epochs",
             "1", "--data_dir", cifar_dir, "--device", "cpu"]
    write_published(published, 1)
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "picture.png")
    runs = {("hw2", "download"): ["download", "--data_dir", cifar_dir],
            ("hw2", "train"): ["train", *small, "--modeldir", modeldir],
            ("hw2", "test"): ["test", "--data_dir", cifar_dir, "--modeldir", modeldir, "--checkpoint", "best"],
            ("hw2", "predict"): ["predict", tmp_path / "picture.png", "--modeldir", modeldir, "--json"],
            ("hw2", "runs"): ["runs", modeldir],
            ("hw2", "import"): ["import", published, "--modeldir", tmp_path / "imported"],
            ("hw2", "export"): ["export", "--modeldir", modeldir, "--format", "torchscript", "--output",
                                tmp_path / "exported.pt"],
            ("hw2.bench", ""): ["--resnet_size", "1", "--batch_size", "8", "--steps", "1", "--eval_images", "16",
                                "--ref_eval_images", "4", "--windows", "1", "--warmup", "0", "--data_dir", cifar_dir]}
    assert typed - {("hw2", "")} == set(runs), "a command of the README or docs/ this test does not run"
    for (program, _), args in runs.items():
        run = on_windows(*args, program=BENCH if program == "hw2.bench" else CLI)
        assert run.returncode == 0, f"{program} {args[0]}: {run.stderr[-2000:]}"
    assert json.loads(run.stdout)["peak_memory_mib"] is None  # the benchmark's last: Windows has no getrusage


def test_a_checkpoint_is_written_where_a_folder_cannot_be_opened(tmp_path, monkeypatch):
    real_open = os.open

    def open_no_folder(path, flags, *args, **kwargs):  # as on Windows
        if os.path.isdir(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_no_folder)
    Checkpoint({"w": torch.ones(2)}, {}, [0.0] * 3, [1.0] * 3).save(tmp_path / "model-1.ckpt")
    monkeypatch.undo()
    assert torch.equal(Checkpoint.load(tmp_path / "model-1.ckpt").model["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model-1.ckpt"]


def test_the_modeldir_lock_is_the_system_lock_of_the_platform(tmp_path, monkeypatch):
    """filelock's lock that the system releases (never its soft lock, a file that merely exists)."""
    assert type(ModeldirLock(tmp_path).lock) is filelock.UnixFileLock
    monkeypatch.setattr(runtime, "WINDOWS", True)
    assert type(ModeldirLock(tmp_path).lock) is filelock.WindowsFileLock


def test_windows_stops_on_ctrl_c_and_ctrl_break_and_leaves_sigterm_alone(monkeypatch):
    monkeypatch.setattr(runtime, "WINDOWS", True)
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR1, raising=False)  # Linux has no Ctrl-Break
    sigterm = signal.getsignal(signal.SIGTERM)
    with _StopRequests() as stop:
        assert signal.getsignal(signal.SIGTERM) == sigterm
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGUSR1) == stop._handle
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert stop.requested(1, torch.device("cpu")) and stop.signum == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL, "handler restored"


def test_where_fused_sgd_cannot_skip_as_on_mps_the_plain_optimizer_skips_a_nonfinite_step(monkeypatch):
    monkeypatch.setattr(hw2.state, "fused_sgd_can_skip", lambda device: False)
    torch.manual_seed(0)
    model = ResNet(1, 1, 10, 8)
    optimizer = make_optimizer(model, learning_rate=0.1)
    assert not optimizer.defaults["fused"]
    images, labels, cpu = torch.randn(8, 3, 32, 32), torch.arange(8), torch.device("cpu")
    before = [p.detach().clone() for p in model.parameters()]
    _, _, finite = train_step(model, optimizer, images.fill_(float("nan")), labels, cpu, torch.float32)
    assert not finite
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "no step on a NaN loss"
    _, _, finite = train_step(model, optimizer, torch.randn(8, 3, 32, 32), labels, cpu, torch.float32)
    assert finite
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "a step on a finite loss"

"""Faults injected for real: processes killed with SIGKILL and SIGTERM, writes failing between write and
rename, files truncated on disk, NaN losses, two runs on one modeldir."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from hw2.checkpoint import (CheckpointError, ModeldirLock, latest_checkpoint, list_checkpoints, load_checkpoint,
                            save_checkpoint)
from hw2.config import Config
from hw2.train import _StopRequests, train
from test_train import read_metrics, small

EPOCHS = 5


def cli_train(cifar_dir, modeldir, *extra):
    """Start a small CLI training run in its own process (ResNet-8, 8 steps an epoch)."""
    args = [sys.executable, "-m", "hw2", "train", "--resnet_size", "1", "--first_num_filters", "8",
            "--batch_size", "20", "--epochs", str(EPOCHS), "--lr_milestones", "3", "--learning_rate", "0.05",
            "--valid_size", "40", "--save_interval", "1", "--data_dir", str(cifar_dir), "--modeldir", str(modeldir),
            "--device", "cpu", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def final_weights(modeldir):
    return load_checkpoint(modeldir / f"model-{EPOCHS}.ckpt")["model"]


@pytest.fixture(scope="module")
def uninterrupted(cifar_dir, tmp_path_factory):
    modeldir = tmp_path_factory.mktemp("uninterrupted") / "model"
    code, _, err = finish(cli_train(cifar_dir, modeldir))
    assert code == 0, err
    return modeldir


def assert_same_run(modeldir, reference):
    a, b = final_weights(modeldir), final_weights(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows, expected = read_metrics(modeldir), read_metrics(reference)
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, EPOCHS + 1)]
    for row, ref in zip(rows, expected):  # a resumed epoch sums its loss in two parts: equal up to rounding
        assert float(row["train_loss"]) == pytest.approx(float(ref["train_loss"]), rel=1e-6)
        assert row["valid_acc"] == ref["valid_acc"]


def test_sigkill_at_a_random_moment_then_resume_gives_identical_weights(cifar_dir, tmp_path, uninterrupted):
    modeldir = tmp_path / "model"
    process = cli_train(cifar_dir, modeldir)
    wait_for(modeldir / "model-2.ckpt", process)
    time.sleep(random.uniform(0, 0.6))
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (modeldir / f"model-{EPOCHS}.ckpt").exists(), "killed before the end"
    code, out, err = finish(cli_train(cifar_dir, modeldir, "--resume"))
    assert code == 0, err
    assert "Resuming from" in out
    assert_same_run(modeldir, uninterrupted)


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_resumes_exactly(cifar_dir, tmp_path, uninterrupted):
    modeldir = tmp_path / "model"
    process = cli_train(cifar_dir, modeldir)
    wait_for(modeldir / "model-1.ckpt", process)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    code, out, err = finish(process)
    assert code == 128 + signal.SIGTERM
    assert "--resume" in err
    newest = list_checkpoints(modeldir)[-1]
    assert newest.name != f"model-{EPOCHS}.ckpt"
    assert str(newest) in err
    assert not (modeldir / ".lock").exists()
    code, out, err = finish(cli_train(cifar_dir, modeldir, "--resume"))
    assert code == 0, err
    assert_same_run(modeldir, uninterrupted)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "model-1.ckpt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def disk_full(obj, f):  # writes half a file, then the disk is full
        f.write(b"\x80\x02partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model-1.ckpt"], "no temporary file left"


def test_a_crash_between_write_and_rename_leaves_no_truncated_checkpoint(tmp_path):
    """A process killed after writing the temporary file but before renaming it."""
    path = tmp_path / "model-2.ckpt"
    save_checkpoint({"epoch": 1}, tmp_path / "model-1.ckpt")
    script = ("import os, sys, torch; from hw2.checkpoint import save_checkpoint\n"
              "os.replace = lambda *a: os.kill(os.getpid(), 9)\n"
              f"save_checkpoint({{'epoch': 2}}, {str(path)!r})\n")
    assert subprocess.run([sys.executable, "-c", script]).returncode == -signal.SIGKILL
    assert not path.exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["model-1.ckpt"]
    assert latest_checkpoint(tmp_path)[1]["epoch"] == 1


def test_truncated_checkpoint_is_named_and_resume_falls_back(cifar_dir, tmp_path):
    config = small(cifar_dir, tmp_path, epochs=2, save_interval=1)
    train(config)
    newest = tmp_path / "model" / "model-2.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model-2.ckpt"):
        load_checkpoint(newest)
    with pytest.warns(UserWarning, match="model-2.ckpt"):
        path, checkpoint = latest_checkpoint(tmp_path / "model")
    assert path.name == "model-1.ckpt" and checkpoint["epoch"] == 1
    with pytest.warns(UserWarning):
        _, metrics = train(small(cifar_dir, tmp_path, epochs=2, save_interval=1, resume=True))
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert load_checkpoint(newest)["epoch"] == 2


def test_checkpoint_of_another_architecture_names_the_mismatch(cifar_dir, tmp_path):
    train(small(cifar_dir, tmp_path, epochs=1))
    with pytest.raises(CheckpointError, match=r"checkpoint is resnet_version 1, resnet_size 1.*config asks for 1, 2"):
        train(small(cifar_dir, tmp_path, epochs=2, resume=True, resnet_size=2))
    with pytest.raises(CheckpointError, match="num_classes 10.*config asks for 1, 1, 8, 5"):
        train(small(cifar_dir, tmp_path, epochs=2, resume=True, num_classes=5))


def test_checkpoints_load_without_running_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"model": Exploit()}, tmp_path / "model-1.ckpt")
    with pytest.raises(CheckpointError, match="model-1.ckpt"):
        load_checkpoint(tmp_path / "model-1.ckpt")
    assert not (tmp_path / "pwned").exists()


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(cifar_dir, tmp_path):
    train(small(cifar_dir, tmp_path, epochs=1, save_interval=1))
    good = load_checkpoint(tmp_path / "model" / "model-1.ckpt")
    with pytest.raises(FloatingPointError, match=r"at epoch 2, step \d+.*model-1.ckpt"):
        train(small(cifar_dir, tmp_path, epochs=3, save_interval=1, resume=True, learning_rate=1e8))
    assert [p.name for p in list_checkpoints(tmp_path / "model")] == ["model-1.ckpt"]
    kept = load_checkpoint(tmp_path / "model" / "model-1.ckpt")
    assert all(torch.equal(kept["model"][k], v) for k, v in good["model"].items())
    assert [r["epoch"] for r in read_metrics(tmp_path / "model")] == ["1"]


def test_nan_loss_can_skip_batches(cifar_dir, tmp_path, capsys):
    _, metrics = train(small(cifar_dir, tmp_path, epochs=2, learning_rate=1e8, on_nan="skip"))
    assert len(metrics) == 2
    assert "whose loss was not finite" in capsys.readouterr().out


def test_existing_checkpoints_are_never_silently_overwritten(cifar_dir, tmp_path):
    train(small(cifar_dir, tmp_path, epochs=1))
    before = (tmp_path / "model" / "model-1.ckpt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(small(cifar_dir, tmp_path, epochs=1, resnet_size=2))
    assert (tmp_path / "model" / "model-1.ckpt").read_bytes() == before


def test_unwritable_modeldir_is_refused_before_training(cifar_dir, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PermissionError, match="not writable"):
        train(small(cifar_dir, tmp_path, modeldir=str(tmp_path / "file" / "model")))


def test_second_run_on_the_same_modeldir_refuses(cifar_dir, tmp_path):
    modeldir = tmp_path / "model"
    first = cli_train(cifar_dir, modeldir)
    wait_for(modeldir / ".lock", first)
    code, _, err = finish(cli_train(cifar_dir, modeldir, "--resume"))
    assert code == 2 and f"in use by another training run (PID {first.pid})" in err
    first.kill()
    first.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(cifar_dir, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / ".lock").write_text(str(dead.pid))
    train(small(cifar_dir, tmp_path, epochs=1))
    assert not (tmp_path / "model" / ".lock").exists()


def test_lock_of_a_live_process_is_respected(tmp_path):
    holder = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / ".lock").write_text(str(holder.pid))
        with pytest.raises(RuntimeError, match=f"PID {holder.pid}"):
            ModeldirLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait()


def test_a_second_signal_stops_at_once(capsys):
    with _StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.signum == signal.SIGINT, "the first one only asks the loop to stop"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert "stopping after this step" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handlers restored"

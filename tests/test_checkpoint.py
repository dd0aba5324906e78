"""Faults injected for real: processes killed with SIGKILL and SIGTERM, writes failing between write and
rename or on a modeldir that stops being writable, files truncated on disk, NaN losses, many runs contending
for one modeldir."""
import dataclasses
import errno
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hw2.checkpoint import Checkpoint
from hw2.errors import CheckpointError, ModeldirBusy, ModeldirError, TrainingDiverged
from hw2.events import Lines
from hw2.modeldir import ModeldirLock, latest_checkpoint, list_checkpoints, read_checkpoint, read_metrics
from hw2.train import _StopRequests, train
from conftest import as_flags, small_config, small_settings

EPOCHS = 5
CONTENDERS = Path(__file__).with_name("lock_contenders.py")


def cli_train(cifar_dir, modeldir, *extra):
    """Start the tests' small run (conftest's TEST_RUN) on the command line, in its own process: EPOCHS epochs
    with a checkpoint each, and the milestone at 3, past the checkpoints (1, 2) after which the tests stop it, so
    that a resumed run still has to drop the rate."""
    settings = small_settings(cifar_dir, modeldir, epochs=EPOCHS, lr_milestones=[3], save_interval=1)
    args = [sys.executable, "-m", "hw2", "train", *as_flags(settings), *extra]
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


def a_checkpoint(epoch):
    """The least an hw2 checkpoint holds: weights, config and normalisation."""
    return Checkpoint(model={"w": torch.full((3,), float(epoch))}, config={}, mean=[0.0] * 3, std=[1.0] * 3,
                      epoch=epoch)


@pytest.fixture(scope="module")
def uninterrupted(cifar_dir, tmp_path_factory):
    modeldir = tmp_path_factory.mktemp("uninterrupted") / "model"
    code, _, err = finish(cli_train(cifar_dir, modeldir))
    assert code == 0, err
    return modeldir


def assert_same_run(modeldir, reference):
    """The same last weights, metrics and best checkpoint (model-best.ckpt: its epoch and weights) as `reference`."""
    a, b = (Checkpoint.load(folder / f"model-{EPOCHS}.ckpt").model for folder in (modeldir, reference))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    best, reference_best = (Checkpoint.load(folder / "model-best.ckpt") for folder in (modeldir, reference))
    assert best.epoch == reference_best.epoch and all(torch.equal(best.model[k], v)
                                                      for k, v in reference_best.model.items())
    rows, expected = read_metrics(modeldir / "metrics.csv"), read_metrics(reference / "metrics.csv")
    assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))
    # a resumed epoch sums its loss in two parts: equal up to rounding
    assert [row["train_loss"] for row in rows] == pytest.approx([row["train_loss"] for row in expected], rel=1e-6)
    assert [row["valid_acc"] for row in rows] == [row["valid_acc"] for row in expected]


def test_sigkill_at_a_random_moment_then_resume_gives_identical_weights(cifar_dir, tmp_path, uninterrupted):
    modeldir = tmp_path / "model"
    process = cli_train(cifar_dir, modeldir)
    wait_for(modeldir / "model-2.ckpt", process)
    time.sleep(random.Random(11).uniform(0, 0.6))  # seeded: a failure can be rerun as it happened
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


def test_a_failed_write_names_the_file_and_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "model-1.ckpt"
    a_checkpoint(1).save(path)

    def disk_full(obj, f):  # writes half a file, then the disk is full
        f.write(b"\x80\x02partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=rf"could not write {path} \(No space left on device\).* intact"):
        a_checkpoint(2).save(path)
    monkeypatch.undo()
    assert Checkpoint.load(path).epoch == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model-1.ckpt"], "no temporary file left"


def test_a_crash_between_write_and_rename_leaves_no_truncated_checkpoint(tmp_path):
    """A process killed after writing the temporary file but before renaming it."""
    path = tmp_path / "model-2.ckpt"
    a_checkpoint(1).save(tmp_path / "model-1.ckpt")
    script = ("import os; from hw2.checkpoint import Checkpoint\n"
              "os.replace = lambda *a: os.kill(os.getpid(), 9)\n"
              f"Checkpoint({{}}, {{}}, [0.0] * 3, [1.0] * 3, epoch=2).save({str(path)!r})\n")
    assert subprocess.run([sys.executable, "-c", script]).returncode == -signal.SIGKILL
    assert not path.exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["model-1.ckpt"]
    assert latest_checkpoint(tmp_path)[1].epoch == 1


def test_a_modeldir_that_becomes_unwritable_mid_run_reports_the_failed_write(cifar_dir, tmp_path, monkeypatch):
    """After model-1.ckpt every write and removal in modeldir fails, as when it becomes read-only (injected:
    chmod does not stop root). The error is the checkpoint write's, not the lock cleanup's."""
    import hw2.checkpoint
    modeldir = tmp_path / "model"
    real_open, real_unlink = open, Path.unlink

    def unwritable(path):  # once epoch 1 is saved (model-1.ckpt, then model-best.ckpt)
        return Path(path).parent == modeldir and (modeldir / "model-best.ckpt").exists()

    def open_(path, *args, **kwargs):
        if unwritable(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    def unlink(path, missing_ok=False):
        if unwritable(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_unlink(path, missing_ok)

    monkeypatch.setattr(hw2.checkpoint, "open", open_, raising=False)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(CheckpointError) as e:
        train(small_config(cifar_dir, tmp_path, epochs=3, save_interval=1))
    monkeypatch.undo()
    assert str(e.value).startswith(f"could not write {modeldir / 'model-2.ckpt'} (Permission denied)")
    assert f"the checkpoints already in {modeldir} are intact" in str(e.value)
    assert Checkpoint.load(modeldir / "model-1.ckpt").epoch == 1


def test_a_damaged_checkpoint_is_named_with_the_one_to_use_instead_and_resume_falls_back(cifar_dir, tmp_path):
    train(small_config(cifar_dir, tmp_path, epochs=2, save_interval=1))
    modeldir = tmp_path / "model"
    newest = modeldir / "model-2.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(newest)
    assert str(e.value).startswith(f"{newest} is damaged (truncated or overwritten) or not an hw2 checkpoint")
    assert str(e.value).endswith(f"; the newest readable checkpoint there is {modeldir / 'model-1.ckpt'}")
    with pytest.warns(UserWarning, match="model-2.ckpt"):
        path, checkpoint = latest_checkpoint(modeldir)
    assert path.name == "model-1.ckpt" and checkpoint.epoch == 1
    with pytest.warns(UserWarning):
        _, metrics = train(small_config(cifar_dir, tmp_path, epochs=2, save_interval=1, resume=True))
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert Checkpoint.load(newest).epoch == 2


@pytest.mark.parametrize("content,reason", [(b"", "damaged"), (b"\x00" * 5000, "damaged"),
                                            ("tensor", "not an hw2 checkpoint: it has no config, mean, model, std")])
def test_a_file_that_is_not_an_hw2_checkpoint_says_so_and_never_suggests_unsafe_loading(tmp_path, content, reason):
    path = tmp_path / "model-3.ckpt"
    if content == "tensor":
        torch.save(torch.ones(3), path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{path} is {reason}.*; {tmp_path} holds no other readable checkpoint") as e:
        read_checkpoint(path)
    assert "weights_only" not in str(e.value)


def test_a_checkpoint_saved_loads_back_with_every_field(tmp_path):
    fields = {"model": {"w": torch.arange(3.0)},
              "config": {"resnet_size": 2, "shortcut": "identity", "dataset": "cifar10"},
              "mean": [125.3, 123.0, 113.9], "std": [63.0, 62.1, 66.7], "epoch": 3, "step": 7,
              "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]},
              "scaler": {"scale": 1024.0, "_growth_tracker": 5}, "metrics": [{"epoch": 1, "lr": 0.1}],
              "partial": {"loss": 1.5, "correct": 4, "seen": 8, "seconds": 0.5},
              "source": {"file": "resnet20-12fca82f.th", "sha256": "0" * 64}, "average": {"w": torch.arange(3.0) / 2}}
    assert fields.keys() == {f.name for f in dataclasses.fields(Checkpoint)}, "a value for every field"
    path = tmp_path / "model-4-step7.ckpt"
    Checkpoint(**fields).save(path)
    loaded = Checkpoint.load(path)
    assert torch.equal(loaded.model["w"], fields["model"]["w"])
    assert torch.equal(loaded.average["w"], fields["average"]["w"])
    assert torch.equal(loaded.optimizer["state"][0]["momentum_buffer"], torch.ones(3))
    assert loaded.optimizer["param_groups"] == fields["optimizer"]["param_groups"]
    plain = fields.keys() - {"model", "optimizer", "average"}  # the fields without tensors, which == compares
    assert {k: getattr(loaded, k) for k in plain} == {k: fields[k] for k in plain}


def test_an_old_checkpoint_loads_with_defaults_for_what_it_lacks(tmp_path):
    """As train wrote it before float16, stopping inside an epoch, option-A shortcuts and CIFAR-100, with the RNG
    state it no longer keeps."""
    path = tmp_path / "model-2.ckpt"
    torch.save({"model": {"w": torch.ones(2)}, "config": {"resnet_version": 1, "resnet_size": 1},
                "mean": [120.0] * 3, "std": [60.0] * 3, "epoch": 2, "step": 0, "optimizer": {"state": {}},
                "metrics": [{"epoch": 1}, {"epoch": 2}], "rng": {"torch": torch.get_rng_state()}}, path)
    checkpoint = Checkpoint.load(path)
    assert checkpoint.config == {"resnet_version": 1, "resnet_size": 1, "shortcut": "projection",
                                 "dataset": "cifar10"}
    assert (checkpoint.epoch, checkpoint.metrics) == (2, [{"epoch": 1}, {"epoch": 2}])
    assert (checkpoint.scaler, checkpoint.partial, checkpoint.source, checkpoint.average) == ({}, {}, {}, {})
    assert torch.equal(checkpoint.model["w"], torch.ones(2))


def test_a_checkpoint_without_its_normalisation_is_refused_naming_what_it_lacks(tmp_path):
    path = tmp_path / "model-1.ckpt"
    torch.save({"model": {"w": torch.ones(2)}, "config": {}, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match=re.escape(f"{path} is not an hw2 checkpoint: it has no mean, std;")):
        read_checkpoint(path)


def test_a_checkpoint_of_another_architecture_names_the_mismatch(cifar_dir, tmp_path):
    train(small_config(cifar_dir, tmp_path, epochs=1))
    with pytest.raises(CheckpointError, match=r"model-1.ckpt holds a network with resnet_version 1, resnet_size 1, "
                                              r"first_num_filters 8, shortcut projection, num_classes 10, not resnet_size 2"):
        train(small_config(cifar_dir, tmp_path, epochs=2, resume=True, resnet_size=2))


def test_checkpoints_load_without_running_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"model": Exploit()}, tmp_path / "model-1.ckpt")
    with pytest.raises(CheckpointError, match="model-1.ckpt is damaged .*or not an hw2 checkpoint") as e:
        Checkpoint.load(tmp_path / "model-1.ckpt")
    assert not (tmp_path / "pwned").exists()
    assert "weights_only" not in str(e.value)


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(cifar_dir, tmp_path):
    train(small_config(cifar_dir, tmp_path, epochs=1, save_interval=1))
    good = Checkpoint.load(tmp_path / "model" / "model-1.ckpt")
    with pytest.raises(TrainingDiverged, match=r"at epoch 2, step \d+.*model-1.ckpt"):
        train(small_config(cifar_dir, tmp_path, epochs=3, save_interval=1, resume=True, learning_rate=1e8))
    assert [p.name for p in list_checkpoints(tmp_path / "model")] == ["model-1.ckpt"]
    kept = Checkpoint.load(tmp_path / "model" / "model-1.ckpt")
    assert all(torch.equal(kept.model[k], v) for k, v in good.model.items())
    assert [row["epoch"] for row in read_metrics(tmp_path / "model" / "metrics.csv")] == [1]


def test_nan_loss_can_skip_batches(cifar_dir, tmp_path, capsys):
    _, metrics = train(small_config(cifar_dir, tmp_path, epochs=2, learning_rate=1e8, on_nan="skip"), Lines())
    assert len(metrics) == 2
    assert "whose loss was not finite" in capsys.readouterr().out


def test_existing_checkpoints_are_never_silently_overwritten(cifar_dir, tmp_path):
    train(small_config(cifar_dir, tmp_path, epochs=1))
    before = (tmp_path / "model" / "model-1.ckpt").read_bytes()
    with pytest.raises(ModeldirError, match="resume=True"):
        train(small_config(cifar_dir, tmp_path, epochs=1, resnet_size=2))
    assert (tmp_path / "model" / "model-1.ckpt").read_bytes() == before


def test_unwritable_modeldir_is_refused_before_training(cifar_dir, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ModeldirError, match="not writable"):
        train(small_config(cifar_dir, tmp_path, modeldir=str(tmp_path / "file" / "model")))


def test_a_run_on_a_modeldir_in_use_refuses_with_the_owner(cifar_dir, tmp_path):
    (tmp_path / "model").mkdir()
    with ModeldirLock(tmp_path / "model"):
        with pytest.raises(ModeldirBusy, match=f"in use by another training run \\(PID {os.getpid()}\\)"):
            train(small_config(cifar_dir, tmp_path, epochs=1))
    assert not list((tmp_path / "model").iterdir()), "the refused run wrote nothing"


def test_of_many_runs_started_together_exactly_one_gets_the_modeldir(tmp_path):
    run = subprocess.run([sys.executable, CONTENDERS, "together", tmp_path, "20"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1"], "processes that held the lock while all 20 tried"


def test_runs_coming_and_going_never_hold_the_modeldir_together(tmp_path):
    """Each release removes the lock file; a run that opened it just before must not lock the removed file
    while another locks its successor."""
    run = subprocess.run([sys.executable, CONTENDERS, "churn", tmp_path, "10"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0"], "processes that found another holder inside the lock"


def test_a_lock_held_by_a_process_killed_with_sigkill_is_released(tmp_path):
    """The system releases the lock of a process that dies without running any code of its own; the .lock file
    it leaves, naming it, is no obstacle."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; from hw2.modeldir import ModeldirLock\n"
                               f"with ModeldirLock({str(tmp_path)!r}):\n print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ModeldirBusy, match=f"in use by another training run \\(PID {holder.pid}\\)"):
            ModeldirLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.communicate()
    assert holder.returncode == -signal.SIGKILL
    assert (tmp_path / ".lock").read_text().strip() == str(holder.pid), "left behind, naming the dead process"
    with ModeldirLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_releasing_the_lock_never_hides_the_exception_in_flight(tmp_path, monkeypatch):
    def unlink(path, missing_ok=False):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))

    with pytest.raises(ValueError, match="the real error"):
        with ModeldirLock(tmp_path):
            monkeypatch.setattr(Path, "unlink", unlink)
            raise ValueError("the real error")
    monkeypatch.undo()
    with ModeldirLock(tmp_path):  # released all the same
        pass


def test_a_second_signal_stops_at_once(capsys):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # SIG_IGN under some launchers
    with _StopRequests(Lines()) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.signum == signal.SIGINT, "the first one only asks the loop to stop"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert "stopping after this step" in capsys.readouterr().out
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before, "handlers restored"

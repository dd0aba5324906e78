"""TensorBoard's event files, read back with TensorBoard's own reader: written as a run trains (`tensorboard`) and
from the metrics.csv of runs that exist (`python -m hw2 runs DIR... --tensorboard OUT`), each epoch's scalars
equal to metrics.csv's; a resumed run's retrained epochs shown once; and without the package, a one-line refusal
before anything is read or trained."""
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hw2 import cli, train as training
from hw2.config import Config, help_text
from hw2.data import BATCH_DIR, BATCHES, steps_per_epoch
from hw2.errors import ConfigError, Hw2Error
from hw2.events import Reporter
from hw2.modeldir import TENSORBOARD, read_config, read_metrics, write_metrics
from hw2.notebook import FIELDS, notebook_config
from hw2.tensorboard import write_runs
from hw2.train import train
from conftest import as_flags, metric_rows, small_config, small_settings

REPORTS = Path(__file__).resolve().parent.parent / "reports"
EVERY = 3  # the tests' CHECK_EVERY: twice in each 8-step epoch, not at its end
MISSING = ("needs the tensorboard package, which is not installed: pip install tensorboard (or, in the repository, "
           "pip install -e .[tensorboard])")


def scalars(logdir):
    """{name: [(step, value)]} of the event files in logdir, as TensorBoard reads them."""
    events = EventAccumulator(str(logdir))
    events.Reload()
    return {name: [(event.step, event.value) for event in events.Scalars(name)] for name in events.Tags()["scalars"]}


def as_written(value):
    """A value as an event file keeps it: a float32."""
    return float(np.float32(value))


def epoch_scalars(rows, steps, batch_size):
    """The epochs' scalars that metrics rows should give, each at the steps done by the epoch's end, with `steps`
    steps of `batch_size` images an epoch."""
    expected = {f"epoch/{name}": [(int(row["epoch"]) * steps, as_written(row[name])) for row in rows]
                for name in rows[0] if name != "epoch" and not np.isnan(rows[0][name])}
    expected["epoch/images_per_second"] = [(int(row["epoch"]) * steps, as_written(steps * batch_size / row["seconds"]))
                                           for row in rows]
    return expected


class StepLosses(Reporter):
    """Keeps each step's loss, as the front end's reporter is given it."""

    def __init__(self):
        self.losses = []

    def step(self, loss):
        self.losses.append(loss.item())


@pytest.fixture
def every(monkeypatch):
    monkeypatch.setattr(training, "CHECK_EVERY", EVERY)
    return EVERY


def test_a_run_writes_each_epochs_metrics_row_and_every_so_many_steps_the_loss(cifar_dir, tmp_path, every):
    config = small_config(cifar_dir, tmp_path, tensorboard=True)  # 160 training images in batches of 20: 8 steps
    shown = StepLosses()
    _, metrics = train(config, shown)
    rows = read_metrics(config.checkpoint_dir / "metrics.csv")
    written = scalars(config.checkpoint_dir / TENSORBOARD)
    steps = [epoch * 8 + step for epoch in range(config.epochs) for step in (3, 6)]
    assert written.pop("step/train_loss") == [(step, as_written(shown.losses[step - 1])) for step in steps]
    assert written == epoch_scalars(rows, 8, config.batch_size)
    assert len(shown.losses) == 8 * config.epochs  # the front end's reporter was given every step
    assert {"epoch/lr", "epoch/train_loss", "epoch/train_acc", "epoch/valid_loss", "epoch/valid_acc",
            "epoch/images_per_second"} <= written.keys()


def test_the_step_interval_the_help_names_is_the_loops():
    assert f"every {training.CHECK_EVERY} steps the training loss" in help_text("tensorboard")


def test_cifar100s_top5_is_written_too(cifar100_dir, tmp_path):
    config = Config(**{**small_settings(cifar100_dir, tmp_path / "model"), "dataset": "cifar100", "epochs": 1,
                       "valid_size": 100, "batch_size": 25, "tensorboard": True})
    train(config)
    [row] = read_metrics(config.checkpoint_dir / "metrics.csv")
    steps = 4  # 100 training images in batches of 25
    assert scalars(config.checkpoint_dir / TENSORBOARD)["epoch/valid_top5"] == [(steps, as_written(row["valid_top5"]))]


def test_a_resumed_run_shows_each_epoch_once_as_retrained(cifar_dir, tmp_path, every):
    config = small_config(cifar_dir, tmp_path, tensorboard=True)  # checkpoints after epochs 2 and 3
    train(config)
    modeldir = config.checkpoint_dir
    first = read_metrics(modeldir / "metrics.csv")
    (modeldir / "model-3.ckpt").unlink()  # as if stopped after epoch 3's row, before its checkpoint
    train(dataclasses.replace(config, resume=True))  # from model-2.ckpt: epoch 3 again
    rows = read_metrics(modeldir / "metrics.csv")
    assert rows[2]["seconds"] != first[2]["seconds"]
    assert len(list((modeldir / TENSORBOARD).iterdir())) == 2  # one event file a session
    written = scalars(modeldir / TENSORBOARD)
    assert [step for step, _ in written.pop("step/train_loss")] == [3, 6, 11, 14, 19, 22]
    assert written == epoch_scalars(rows, 8, config.batch_size)  # epoch 3 as retrained, once


def test_a_failed_start_leaves_no_modeldir_behind(tmp_path):
    data = tmp_path / "data" / BATCH_DIR
    data.mkdir(parents=True)
    for name in BATCHES:
        (data / name).write_bytes(b"not a batch")
    config = small_config(tmp_path / "data", tmp_path, tensorboard=True)
    with pytest.raises(Hw2Error):
        train(config)
    assert not config.checkpoint_dir.exists()


def test_runs_writes_reported_runs_from_their_metrics_csv(tmp_path, capsys):
    runs = [REPORTS / "r20_he", REPORTS / "fast60" / "fast60_seed0"]
    out = tmp_path / "tb"
    for _ in range(2):  # a second time replaces the files of the first
        assert cli.main(["runs", *map(str, runs), "--tensorboard", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "r20_he" in printed and "fast60_seed0" in printed  # the table
    assert printed.endswith(f"TensorBoard event files of 2 runs in {out}: tensorboard --logdir {out}\n")
    for run in runs:
        assert len(list((out / run.name).iterdir())) == 1
        rows = read_metrics(run / "metrics.csv")
        config = Config.from_dict(read_config(run))
        assert scalars(out / run.name) == epoch_scalars(rows, steps_per_epoch(config), config.batch_size)
    assert len(rows) == 60 and config.valid_size == 5000 and steps_per_epoch(config) == 351


def test_runs_leaves_out_a_run_without_validation_and_refuses_two_of_one_name(tmp_path):
    for parent in ("a", "b"):
        run = tmp_path / parent / "model"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps(dataclasses.asdict(Config(valid_size=0))))
        write_metrics(run, metric_rows(2))
    [logdir] = write_runs([tmp_path / "a" / "model"], tmp_path / "tb")
    assert sorted(scalars(logdir)) == ["epoch/images_per_second", "epoch/lr", "epoch/seconds", "epoch/train_acc",
                                       "epoch/train_loss"]
    with pytest.raises(Hw2Error, match="more than one run is in a folder named model"):
        write_runs([tmp_path / "a" / "model", tmp_path / "b" / "model"], tmp_path / "tb")


@pytest.fixture
def without_tensorboard(monkeypatch):
    """As where the tensorboard package is not installed: importing it, or torch's module that needs it, fails."""
    for name in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)


def test_without_the_package_the_command_line_refuses_at_once(cifar_dir, tmp_path, capsys, without_tensorboard):
    modeldir, data_dir = tmp_path / "model", tmp_path / "data"  # data_dir missing: training would download
    settings = small_settings(cifar_dir, modeldir, data_dir=str(data_dir), tensorboard=True)
    assert cli.main(["train", *as_flags(settings)]) == 2
    assert capsys.readouterr() == ("", f"error: --tensorboard {MISSING}\n")
    assert not modeldir.exists() and not data_dir.exists()
    assert cli.main(["runs", str(REPORTS / "r20_he"), "--tensorboard", str(tmp_path / "tb")]) == 2
    assert capsys.readouterr() == ("", f"error: --tensorboard {MISSING}\n")  # not even the table
    assert not (tmp_path / "tb").exists()


def test_without_the_package_train_and_a_notebook_refuse_at_once(cifar_dir, tmp_path, without_tensorboard):
    config = small_config(tmp_path / "data", tmp_path, tensorboard=True)  # a Config may say so: a saved one does
    with pytest.raises(ConfigError) as refused:
        train(config)
    assert str(refused.value) == f"tensorboard=True {MISSING}"
    assert not config.checkpoint_dir.exists() and not (tmp_path / "data").exists()
    parameters = {name: getattr(config, name) for name in FIELDS}
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        notebook_config(parameters)  # the parameters cell's Config: before the cells that read data and train

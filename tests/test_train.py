import dataclasses
import io
import math
import re
import sys

import pytest
import torch
import torch.distributed as dist

from conftest import small_config
from hw2 import cli
from hw2.checkpoint import Checkpoint
from hw2.config import FAST_RECIPE, Config
from hw2.errors import Hw2Error, Interrupted, ModeldirError, flag_words, worded_as
from hw2.events import Lines
from hw2.modeldir import METRICS, list_checkpoints, read_metrics, run_differences
from hw2.models import ResNet
from hw2.notebook import NotebookReport, cell_config, parameter_words
from hw2.runtime import grad_scaler
from hw2.state import make_optimizer
from hw2.train import _start_processes, _StopRequests, get_image_size, get_lr, train, train_step


def test_step_schedule_divides_by_ten_after_each_milestone():
    config = Config(epochs=182, lr_milestones=[91, 136])
    assert get_lr(0, config) == 0.1 and get_lr(90.99, config) == 0.1
    assert get_lr(91, config) == pytest.approx(0.01) and get_lr(136, config) == pytest.approx(0.001)
    five = Config(epochs=5, lr_milestones=[4])
    assert [get_lr(e, five) for e in range(4)] == [0.1] * 4 and get_lr(4, five) == pytest.approx(0.01)


def test_cosine_schedule_with_warmup():
    config = Config(epochs=10, lr_schedule="cosine", warmup_epochs=2, learning_rate=0.4)
    assert get_lr(0, config) == 0 and get_lr(1, config) == pytest.approx(0.2) and get_lr(2, config) == pytest.approx(0.4)
    assert get_lr(6, config) == pytest.approx(0.2) and get_lr(10, config) == pytest.approx(0, abs=1e-12)


def test_progressive_resizing_grows_the_images_to_32():
    config = Config(epochs=16, lr_milestones=[8, 12], resize_fraction=0.75, min_image_size=16)
    assert [get_image_size(e, config) for e in range(16)] == [16] * 3 + [20] * 3 + [24] * 3 + [28] * 3 + [32] * 4
    assert {get_image_size(e, Config(epochs=5, lr_milestones=[4])) for e in range(5)} == {32}, "off by default"
    assert get_image_size(0, Config(epochs=4, lr_milestones=[], resize_fraction=0.5, min_image_size=18)) == 18
    assert [get_image_size(e, Config(**{**FAST_RECIPE, "epochs": 7})) for e in range(7)] == [16, 16, 20, 24, 28, 28, 32]


@pytest.mark.parametrize("field,value", [("resnet_version", 3), ("resnet_size", 0), ("batch_size", 0),
                                         ("learning_rate", 0), ("learning_rate", -1), ("device", "tpu"),
                                         ("lr_schedule", "linear"), ("dtype", "float8"), ("epochs", 0),
                                         ("on_nan", "ignore"), ("valid_size", -1), ("lr_milestones", [5, 3]), ("resize_fraction", 1.0),
                                         ("min_image_size", 4), ("ema_decay", 1.0), ("cutout", 33),
                                         ("cutout", -1), ("flip", "vertical")])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Config(**{field: value})


def test_notebook_parameters_must_all_be_set():
    namespace = {"resnet_size": 5, "resnet_version": 2}
    assert cell_config(namespace, ["resnet_size", "resnet_version"]).resnet_size == 5
    with pytest.raises(ValueError, match=r"must set \['first_num_filters'\]"):
        cell_config(namespace, ["resnet_size", "first_num_filters"])


def test_defaults_are_he_et_al_recipe():
    c = Config()
    assert (c.batch_size, c.learning_rate, c.momentum, c.weight_decay, c.epochs, c.lr_milestones, c.valid_size) == \
        (128, 0.1, 0.9, 1e-4, 182, [91, 136], 5000)
    assert set(FAST_RECIPE) <= {f for f in c.__dataclass_fields__}


def test_train_writes_checkpoints_metrics_and_the_epoch_line(cifar_dir, tmp_path, capsys):
    config = small_config(cifar_dir, tmp_path)
    model, metrics = train(config, Lines())
    modeldir = tmp_path / "model"
    assert sorted(p.name for p in modeldir.glob("*.ckpt")) == ["model-2.ckpt", "model-3.ckpt", "model-best.ckpt"]
    assert (modeldir / "metrics.csv").read_text().splitlines()[0] == ",".join(METRICS)
    rows = read_metrics(modeldir / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert all(row == pytest.approx(written) for row, written in zip(rows, metrics)), "the CSV holds what train returns"
    # the learning-rate change reaches the optimizer: the column is read back from it
    assert [row["lr"] for row in rows] == pytest.approx([0.05, 0.05, 0.005])
    assert rows[-1]["train_acc"] > 0.3 and rows[-1]["valid_acc"] > 0.3  # chance is 0.1
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    out = capsys.readouterr().out
    assert [line.split(" Duration")[0] for line in out.splitlines() if line.startswith("Epoch ")] == \
        [f"Epoch {row['epoch']} Loss {row['train_loss']:.4f}" for row in metrics]
    checkpoint = Checkpoint.load(modeldir / "model-3.ckpt")
    assert checkpoint.epoch == 3 and checkpoint.config["resnet_size"] == 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in checkpoint.model.items())


def test_progressive_resizing_trains_on_smaller_images_then_32(cifar_dir, tmp_path, monkeypatch):
    import hw2.state
    sizes = []

    class Recording(ResNet):
        def forward(self, x):
            if self.training:  # validation traces the network with torch.fx
                sizes.append(tuple(x.shape[2:]))
            return super().forward(x)

    monkeypatch.setattr(hw2.state, "build_network", lambda c: Recording(1, c.resnet_size, 10, c.first_num_filters))
    _, metrics = train(small_config(cifar_dir, tmp_path, resize_fraction=0.5, min_image_size=16))
    assert sizes == [(16, 16)] * 8 + [(24, 24)] * 8 + [(32, 32)] * 8  # 160 images, batch 20
    assert all(math.isfinite(row["train_loss"]) for row in metrics)


def test_same_seed_same_weights(cifar_dir, tmp_path, capsys):
    a, _ = train(dataclasses.replace(small_config(cifar_dir, tmp_path / "a", epochs=1), lr_milestones=[2]), Lines())
    assert "warning: lr_milestones [2] are not below epochs (1), so they never take effect" in capsys.readouterr().out
    b, _ = train(small_config(cifar_dir, tmp_path / "b", epochs=1))
    c, _ = train(small_config(cifar_dir, tmp_path / "c", epochs=1, seed=1))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.output_layer.fc.weight, c.output_layer.fc.weight)



def test_a_network_that_cannot_compile_trains_without_it_and_says_so(cifar_dir, tmp_path, monkeypatch, capsys):
    class CannotCompile(torch.nn.Module):  # torch.compile's result fails at its first call, where compiling happens
        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, images):
            raise RuntimeError("Compiler: cl is not found.\nmore detail")
    eager, _ = train(small_config(cifar_dir, tmp_path / "eager", epochs=1))
    monkeypatch.setattr(torch, "compile", CannotCompile)
    fallen_back, _ = train(small_config(cifar_dir, tmp_path / "compiled", epochs=1, compile=True), Lines())
    [warning] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    assert warning == ("warning: torch.compile failed (RuntimeError: Compiler: cl is not found.); training without "
                       "it. Set compile=False to skip the attempt.")
    assert all(torch.equal(x, y) for x, y in zip(eager.state_dict().values(), fallen_back.state_dict().values()))


def _tiny_network_and_batch(seed=0):
    torch.manual_seed(seed)
    model = ResNet(1, 1, first_num_filters=8)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    return model, images, labels


def test_float16_steps_with_a_loss_scaler(tmp_path):
    model, images, labels = _tiny_network_and_batch()
    optimizer, cpu = make_optimizer(model, learning_rate=0.05), torch.device("cpu")
    scaler = grad_scaler(cpu, torch.float16)
    losses = [train_step(model, optimizer, images, labels, cpu, torch.float16, scaler=scaler)[0].item() for _ in range(5)]
    assert losses[-1] < losses[0], "float16 with loss scaling learns the batch"
    assert scaler.get_scale() > 0


def test_a_non_finite_loss_leaves_weights_and_momentum_alone():
    model, images, labels = _tiny_network_and_batch()
    optimizer, cpu = make_optimizer(model), torch.device("cpu")
    for scaler in (None, grad_scaler(cpu, torch.float16)):
        dtype = torch.float32 if scaler is None else torch.float16
        train_step(model, optimizer, images, labels, cpu, dtype, scaler=scaler)  # momentum is now non-zero
        before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "batches" not in k}
        momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
        loss, _, finite = train_step(model, optimizer, images * float("nan"), labels, cpu, dtype, scaler=scaler)
        assert not finite and not torch.isfinite(loss)
        assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
        assert all(torch.equal(m, optimizer.state[p]["momentum_buffer"]) for m, p in zip(momentum, model.parameters()))


def test_the_training_loop_waits_for_the_device_once_per_epoch_not_per_step(cifar_dir, tmp_path, monkeypatch):
    """Reading a tensor's value on the host (item, bool, int, float, tolist) makes the host wait for the
    device; counted over a whole run, twice the steps must make no more reads."""
    reads = []
    for name in ("item", "__bool__", "__int__", "__float__", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _f=original, **k: reads.append(1) or _f(self, *a, **k))

    def count(batch_size, folder):
        reads.clear()
        train(small_config(cifar_dir, tmp_path / folder, epochs=2, batch_size=batch_size, valid_size=0, save_interval=5))
        return len(reads)

    assert count(40, "a") == count(10, "b")  # 4 steps an epoch against 16


def test_the_process_group_backend_follows_the_device(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _start_processes(torch.device("cpu")) == (1, 2, torch.device("cpu"))
    assert calls == [("gloo", {})]  # a GPU on the machine does not matter: the device asked for does
    calls.clear()
    assert _start_processes(torch.device("cuda")) == (1, 2, torch.device("cuda", 1))
    assert calls == [("set_device", torch.device("cuda", 1)), ("nccl", {"device_id": torch.device("cuda", 1)})]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _start_processes(torch.device("cpu")) == (0, 1, torch.device("cpu"))


def test_epoch_lines_show_validation_accuracy_and_the_run_ends_with_a_summary(cifar_dir, tmp_path, capsys):
    config = small_config(cifar_dir, tmp_path)
    _, metrics = train(config, Lines())
    lines = capsys.readouterr().out.splitlines()
    epochs = [line for line in lines if line.startswith("Epoch ")]
    assert [line.split(" Validation accuracy ")[1] for line in epochs] == [f"{r['valid_acc']:.4f}" for r in metrics]
    best = max(metrics, key=lambda r: r["valid_acc"])
    assert lines[-1].startswith("Trained 3 epochs in ")
    assert f"best {best['valid_acc']:.4f} (epoch {best['epoch']}), last {metrics[-1]['valid_acc']:.4f}" in lines[-1]
    assert lines[-1].endswith(f"Checkpoints in {config.checkpoint_dir} (newest model-3.ckpt). "
                              f"model-best.ckpt holds epoch {best['epoch']}.")

    _, again = train(dataclasses.replace(config, resume=True), Lines())  # a finished run: says so, trains nothing
    lines = capsys.readouterr().out.splitlines()
    assert again == metrics and not [line for line in lines if line.startswith("Epoch ")]
    assert f"{config.checkpoint_dir} has finished all 3 epochs; nothing to train." in lines
    assert lines[-1].startswith("Trained 3 epochs in ")


def test_a_resumed_run_removes_the_mid_epoch_checkpoint_once_past_it(cifar_dir, tmp_path, monkeypatch):
    calls = []

    def stop_at_step_3_of_epoch_2(self, world, device):
        calls.append(1)
        return len(calls) == 8 + 3  # 8 steps an epoch
    monkeypatch.setattr(_StopRequests, "requested", stop_at_step_3_of_epoch_2)
    config = small_config(cifar_dir, tmp_path, save_interval=1)
    with pytest.raises(Interrupted, match=r"Run it again with resume=True to continue\.$") as stopped:
        train(config)
    modeldir = config.checkpoint_dir
    assert stopped.value.path == modeldir / "model-2-step3.ckpt"
    assert [p.name for p in list_checkpoints(modeldir)] == ["model-1.ckpt", "model-2-step3.ckpt"]
    monkeypatch.undo()
    train(dataclasses.replace(config, resume=True))
    assert [p.name for p in list_checkpoints(modeldir)] == ["model-1.ckpt", "model-2.ckpt", "model-3.ckpt"]


def test_cutout_and_alternate_flip_train_differently_and_resume_bit_identically(cifar_dir, tmp_path, monkeypatch):
    config = small_config(cifar_dir, tmp_path, cutout=8, flip="alternate", save_interval=1)
    whole, metrics = train(dataclasses.replace(config, modeldir=str(tmp_path / "whole")))
    plain, _ = train(small_config(cifar_dir, tmp_path / "plain"))
    assert not torch.equal(whole.output_layer.fc.weight, plain.output_layer.fc.weight)
    calls = []
    monkeypatch.setattr(_StopRequests, "requested", lambda self, world, device: calls.append(1) or len(calls) == 8 + 3)
    with pytest.raises(Interrupted):  # at step 3 of epoch 2 (8 steps an epoch), so an odd epoch is resumed
        train(config)
    monkeypatch.undo()
    assert Checkpoint.load(config.checkpoint_dir / "model-2-step3.ckpt").config["cutout"] == 8
    resumed, resumed_metrics = train(dataclasses.replace(config, resume=True))
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()))
    assert [row["train_loss"] for row in resumed_metrics] == pytest.approx([row["train_loss"] for row in metrics],
                                                                           rel=1e-6)


def test_the_best_checkpoint_is_the_first_epoch_of_the_best_validation_accuracy_also_after_a_resume(
        cifar_dir, tmp_path, monkeypatch, capsys):
    config = small_config(cifar_dir, tmp_path, epochs=4, save_interval=3, learning_rate=0.2)
    whole, metrics = train(dataclasses.replace(config, modeldir=str(tmp_path / "whole")))
    best = max(metrics, key=lambda row: row["valid_acc"])  # the first of equals
    kept = Checkpoint.load(tmp_path / "whole" / "model-best.ckpt")
    assert kept.epoch == best["epoch"] and kept.metrics == metrics[:best["epoch"]]
    calls = []  # stopped at step 3 of epoch 3, then resumed from model-3-step3 (8 steps an epoch)
    monkeypatch.setattr(_StopRequests, "requested", lambda self, world, device: calls.append(1) or len(calls) == 19)
    with pytest.raises(Interrupted):
        train(config)
    monkeypatch.undo()
    train(dataclasses.replace(config, resume=True), Lines())
    resumed = Checkpoint.load(config.checkpoint_dir / "model-best.ckpt")
    assert resumed.epoch == kept.epoch and all(torch.equal(resumed.model[k], v) for k, v in kept.model.items())
    assert f"model-best.ckpt holds epoch {best['epoch']}." in capsys.readouterr().out
    assert cli.main(["test", "--modeldir", str(config.checkpoint_dir), "--data_dir", str(cifar_dir),
                     "--checkpoint", "best"]) == 0
    assert "Restored model parameters from " + str(config.checkpoint_dir / "model-best.ckpt") in capsys.readouterr().out


def test_without_a_validation_split_there_is_no_best_checkpoint_and_the_summary_says_so(cifar_dir, tmp_path, capsys):
    config = small_config(cifar_dir, tmp_path, epochs=1, valid_size=0)
    train(config, Lines())
    assert capsys.readouterr().out.splitlines()[-1].endswith(". No validation split, so no model-best.ckpt.")
    assert not (config.checkpoint_dir / "model-best.ckpt").exists()
    assert cli.main(["test", "--modeldir", str(config.checkpoint_dir), "--checkpoint", "best"]) == 2
    assert "has no model-best.ckpt; it has model-1.ckpt" in capsys.readouterr().err


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_modeldir(tmp_path):
    config = Config(data_dir=str(tmp_path / "no-data"), modeldir=str(tmp_path / "runs" / "new"), device="cpu")
    with pytest.raises(Hw2Error):
        train(config)  # no CIFAR-10 and no network here (or a failed download)
    assert not (tmp_path / "runs" / "new").exists()


def test_checkpoints_of_the_old_format_with_gpu_rng_states_resume(cifar_dir, tmp_path):
    """Checkpoints once held the global RNG states, one per visible GPU, which nothing in training draws
    from; a checkpoint written on an 8-GPU machine must resume on a machine with fewer."""
    config = small_config(cifar_dir, tmp_path, save_interval=1)
    uninterrupted, _ = train(dataclasses.replace(config, modeldir=str(tmp_path / "whole")))
    train(dataclasses.replace(config, epochs=2, lr_milestones=[]))
    path = config.checkpoint_dir / "model-2.ckpt"
    old = torch.load(path, weights_only=True)  # the file's dict, to write it back as the old format had it
    old["config"]["epochs"] = 3
    old["rng"] = {"torch": torch.get_rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)] * 8}
    torch.save(old, path)
    model, _ = train(dataclasses.replace(config, resume=True))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), uninterrupted.state_dict().values()))


@pytest.mark.parametrize("reporter,frontend,bar", [(Lines, None, "text on stderr"),
                                                   (NotebookReport, None, "text on stdout"),
                                                   (NotebookReport, "nbclient", "text on stdout"),
                                                   (NotebookReport, "jupyterlab", "widget")])
def test_the_progress_bar_fits_the_place(monkeypatch, reporter, frontend, bar):
    from tqdm.notebook import tqdm_notebook

    class Kernel:
        def get_parent(self, channel):  # the execute request being run, as ipykernel keeps it
            assert channel == "shell"
            return {"content": {"allow_stdin": frontend == "jupyterlab"}}  # JupyterLab answers input(); nbclient not

    class Shell:
        kernel = Kernel()

    monkeypatch.setitem(sys.modules, "IPython", type(sys)("IPython"))
    sys.modules["IPython"].get_ipython = lambda: Shell() if frontend else None
    made = reporter().progress_bar(total=3, disable=bar == "widget")  # a widget needs a real kernel to draw in
    if bar == "widget":
        assert isinstance(made, tqdm_notebook)
    else:
        assert not isinstance(made, tqdm_notebook)
        assert made.fp._wrapped is (sys.stdout if bar == "text on stdout" else sys.stderr)
    made.close()


@pytest.mark.parametrize("terminal", [True, False])
def test_the_command_line_draws_its_bar_on_a_terminal_alone(monkeypatch, terminal):
    """A batch job's output file (SLURM's slurm-*.out) would keep every redraw of the bar: none there."""
    stderr = io.StringIO()
    stderr.isatty = lambda: terminal
    monkeypatch.setattr(sys, "stderr", stderr)
    with Lines().progress_bar(total=3) as bar:
        drawn = not bar.disable
        bar.update(3)
    assert drawn == terminal
    assert ("3/3" in stderr.getvalue()) == terminal


def test_a_notebook_run_again_shows_a_finished_run_continues_an_unfinished_one_and_names_other_parameters(
        cifar_dir, tmp_path, capsys):
    config = small_config(cifar_dir, tmp_path, epochs=2, save_interval=1)
    modeldir = config.checkpoint_dir
    _, metrics = train(config, Lines(), continue_same_run=True)
    capsys.readouterr()

    _, again = train(config, Lines(), continue_same_run=True)  # Run All again: the finished run, at once
    out = capsys.readouterr().out
    assert again == metrics and "Epoch " not in out
    assert f"{modeldir} holds a run of these same parameters: continuing it" in out
    assert f"{modeldir} has finished all 2 epochs; nothing to train." in out

    (modeldir / "model-2.ckpt").unlink()  # as if stopped after epoch 1: continued, saying so
    train(config, Lines(), continue_same_run=True)
    out = capsys.readouterr().out
    assert "holds a run of these same parameters" in out and [line.split(" Loss")[0] for line in out.splitlines()
                                                              if line.startswith("Epoch ")] == ["Epoch 2"]

    before = {path.name: path.read_bytes() for path in modeldir.iterdir()}
    with pytest.raises(ModeldirError) as refused, worded_as(parameter_words):  # as in a notebook's kernel
        train(dataclasses.replace(config, epochs=3, learning_rate=0.1), continue_same_run=True)
    message = str(refused.value)
    assert refused.value._render_traceback_() == [f"ModeldirError: {message}"]  # IPython shows this one line
    assert "other parameters (epochs 2 there, 3 here; learning_rate 0.05 there, 0.1 here)" in message
    assert "Set those back" in message and "resume = True" in message and "new modeldir" in message
    with pytest.raises(ModeldirError) as refused:  # another network: resume cannot continue it
        train(dataclasses.replace(config, resnet_size=2), continue_same_run=True)
    assert "resnet_size 1 there, 2 here" in str(refused.value) and "resume=True" not in str(refused.value)
    assert {path.name: path.read_bytes() for path in modeldir.iterdir()} == before  # not even the log


def test_the_command_line_keeps_resume_explicit_and_its_refusal_names_what_differs(cifar_dir, tmp_path):
    config = small_config(cifar_dir, tmp_path, epochs=1)
    train(config)
    for changes, expected in [({}, r"holds checkpoints of a run with these parameters; newest model-1.ckpt. Pass "
                                   r"--resume to continue that run; to start another, choose a new --modeldir"),
                              ({"epochs": 2}, r"other parameters \(epochs 1 there, 2 here\); newest model-1.ckpt. "
                                              r"Pass --resume to continue that run with these values"),
                              ({"first_num_filters": 16}, "first_num_filters 8 there, 16 here.*pass the values it "
                                                          "has and --resume")]:
        with pytest.raises(ModeldirError) as refused, worded_as(flag_words):  # as on the command line (hw2.cli.main)
            train(dataclasses.replace(config, **changes))
        assert re.search(expected, str(refused.value))
    # where and how a run computes is not what it learns: continuing under other values is the same run
    assert run_differences(dataclasses.asdict(config), dataclasses.replace(
        config, device="auto", dtype="float32", data_dir="elsewhere", save_interval=7, compile=True)) == {}
    old = {k: v for k, v in dataclasses.asdict(config).items() if k != "shortcut"}  # a run from before shortcut
    assert run_differences(old, config) == {}

"""`python -m hw2 import`: a checkpoint in the layout of akamaster/pytorch_resnet_cifar10, written here with random
weights, gives the logits of an independent forward pass written from that layout; it tests and fine-tunes;
files of other layouts, damaged files and files that need unsafe loading are refused with what does not fit. Names
saved from a compiled or data-parallel network import too, and hw2's own runs, compiled, data parallel or both,
checkpoint their network without those wrappers' prefixes."""
import collections
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import small_config
from hw2 import cli
from hw2.augment import Loader
from hw2.checkpoint import Checkpoint
from hw2.config import Config
from hw2.data import load_test_data
from hw2.errors import CheckpointError, ModeldirError
from hw2.evaluate import fold_batchnorm, predict, restore
from hw2.events import Lines
from hw2.models import ResNet
from hw2.published import WRAPPED, import_checkpoint
from hw2.train import train
from test_distributed import SETTINGS, torchrun

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def published_state(n, width=16, seed=0):
    """A random state_dict of akamaster's resnet{6n+2} at `width`, named as its .th files name it (saved from
    nn.DataParallel). Shapes from the layout: conv1 3->width, layer{1,2,3} at width x1, x2, x4, linear."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=generator)

    def conv(out_channels, in_channels):  # He initialisation keeps the activations in range
        return torch.randn(out_channels, in_channels, 3, 3, generator=generator) * (2 / (9 * in_channels)) ** 0.5

    def bn(name, channels):
        return {f"{name}.weight": uniform(channels, 0.5, 1.5), f"{name}.bias": uniform(channels, -0.2, 0.2),
                f"{name}.running_mean": uniform(channels, -0.2, 0.2), f"{name}.running_var": uniform(channels, 0.5, 2),
                f"{name}.num_batches_tracked": torch.tensor(1000)}

    state = {"conv1.weight": conv(width, 3), **bn("bn1", width)}
    in_planes = width
    for layer, planes in enumerate([width, 2 * width, 4 * width], start=1):
        for i in range(n):
            block = f"layer{layer}.{i}"
            state.update({f"{block}.conv1.weight": conv(planes, in_planes), **bn(f"{block}.bn1", planes),
                          f"{block}.conv2.weight": conv(planes, planes), **bn(f"{block}.bn2", planes)})
            in_planes = planes
    state["linear.weight"] = torch.randn(10, in_planes, generator=generator) / in_planes ** 0.5
    state["linear.bias"] = uniform(10, -0.1, 0.1)
    return collections.OrderedDict((f"module.{name}", value) for name, value in state.items())


def reference_logits(state, images, n):
    """akamaster's forward pass written from the layout with torch.nn.functional, BN with its running
    statistics, on uint8 images [N, 3072] scaled to [0, 1] and normalised with ImageNet's mean and std."""
    s = {name.removeprefix("module."): value for name, value in state.items()}

    def bn(x, name):
        return F.batch_norm(x, s[f"{name}.running_mean"], s[f"{name}.running_var"], s[f"{name}.weight"],
                            s[f"{name}.bias"], training=False, eps=1e-5)

    x = torch.as_tensor(images).view(-1, 3, 32, 32).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = F.relu(bn(F.conv2d(x, s["conv1.weight"], padding=1), "bn1"))
    for layer in (1, 2, 3):
        for i in range(n):
            block, stride = f"layer{layer}.{i}", 2 if layer > 1 and i == 0 else 1
            y = F.relu(bn(F.conv2d(out, s[f"{block}.conv1.weight"], stride=stride, padding=1), f"{block}.bn1"))
            y = bn(F.conv2d(y, s[f"{block}.conv2.weight"], padding=1), f"{block}.bn2")
            if stride == 2:  # option A: subsample, planes // 4 zero channels on each side
                planes = y.shape[1]
                out = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
            out = F.relu(y + out)
    out = F.avg_pool2d(out, out.shape[3]).flatten(1)
    return F.linear(out, s["linear.weight"], s["linear.bias"])


def write_published(path, n, **fields):
    state = published_state(n, **fields)
    torch.save({"epoch": 200, "state_dict": state, "best_prec1": 91.73}, path)
    return state


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (24, 3072)).astype(np.uint8), rng.integers(0, 10, 24)


@pytest.mark.parametrize("n,width", [(1, 16), (2, 8)])
def test_imported_logits_equal_the_published_forward_pass(tmp_path, images, n, width):
    state = write_published(tmp_path / f"resnet{6 * n + 2}.th", n, width=width)
    path, config = import_checkpoint(tmp_path / f"resnet{6 * n + 2}.th", tmp_path / "run")
    assert (config.resnet_version, config.resnet_size, config.first_num_filters) == (1, n, width)
    assert config.shortcut == "identity"
    model, checkpoint = restore(path, "cpu")
    x, y = images
    loader = Loader(x, y, 8, (checkpoint.mean, checkpoint.std), torch.device("cpu"))
    expected = reference_logits(state, x, n)
    assert expected.std() > 0.1  # logits worth comparing
    torch.testing.assert_close(predict(model.eval(), loader), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(predict(fold_batchnorm(model), loader), expected, rtol=1e-4, atol=1e-4)


def test_the_checkpoint_says_where_it_came_from_and_resumes_at_epoch_0(tmp_path):
    write_published(tmp_path / "resnet20-12fca82f.th", 3)
    path, _ = import_checkpoint(tmp_path / "resnet20-12fca82f.th", tmp_path / "run")
    checkpoint = Checkpoint.load(path)
    assert path.name == "model-0.ckpt" and checkpoint.epoch == 0 and checkpoint.metrics == []
    assert checkpoint.source["file"] == "resnet20-12fca82f.th" and len(checkpoint.source["sha256"]) == 64
    assert checkpoint.config == dataclasses.asdict(Config(resnet_size=3, shortcut="identity",
                                                          modeldir=str(tmp_path / "run")))
    np.testing.assert_allclose(checkpoint.mean, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(checkpoint.std, [58.395, 57.12, 57.375])
    with pytest.raises(ModeldirError, match=r"already holds checkpoints \(model-0.ckpt is the newest\); import into a "
                                            r"new modeldir\."):
        import_checkpoint(tmp_path / "resnet20-12fca82f.th", tmp_path / "run")


def test_the_command_line_imports_tests_and_fine_tunes(tmp_path, cifar_dir, capsys):
    state = write_published(tmp_path / "resnet8.th", 1)
    modeldir = tmp_path / "run"
    assert cli.main(["import", str(tmp_path / "resnet8.th"), "--modeldir", str(modeldir)]) == 0
    out = capsys.readouterr().out
    assert "ResNet-8" in out and "--resnet_size 1 --shortcut identity" in out

    assert cli.main(["test", "--modeldir", str(modeldir), "--data_dir", str(cifar_dir), "--device", "cpu",
                     "--dtype", "float32"]) == 0
    x_test, y_test = load_test_data(cifar_dir)
    accuracy = (reference_logits(state, x_test, 1).argmax(1).numpy() == y_test).mean()
    assert f"Test accuracy: {accuracy:.4f}" in capsys.readouterr().out

    tune = ["train", "--resume", "--modeldir", str(modeldir), "--resnet_size", "1", "--epochs", "1",
            "--learning_rate", "0.01", "--lr_milestones", "--batch_size", "20", "--train_subset", "40",
            "--valid_size", "40", "--data_dir", str(cifar_dir), "--device", "cpu", "--dtype", "float32"]
    assert cli.main(tune) == 2  # the network must be named as it is
    assert "shortcut identity" in capsys.readouterr().err
    assert cli.main([*tune, "--shortcut", "identity"]) == 0
    assert "Resuming from" in capsys.readouterr().out
    imported, tuned = Checkpoint.load(modeldir / "model-0.ckpt"), Checkpoint.load(modeldir / "model-1.ckpt")
    np.testing.assert_allclose([tuned.mean, tuned.std], [imported.mean, imported.std])  # the authors'
    assert len(tuned.metrics) == 1 and tuned.optimizer
    weight = "stack_layers.0.0.conv1.weight"
    change = (tuned.model[weight] - imported.model[weight]).norm() / imported.model[weight].norm()
    assert 0 < change < 0.1, "fine-tuned from the imported weights"


def test_damaged_and_foreign_files_are_refused_naming_what_does_not_fit(tmp_path):
    file = tmp_path / "resnet8.th"
    write_published(file, 1)
    data = file.read_bytes()
    (tmp_path / "truncated.th").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated.th is damaged \(truncated\?\) or not a PyTorch checkpoint"):
        import_checkpoint(tmp_path / "truncated.th", tmp_path / "a")
    with pytest.raises(CheckpointError, match="cannot read"):
        import_checkpoint(tmp_path / "absent.th", tmp_path / "a")

    torch.save(published_state(1)["module.conv1.weight"], tmp_path / "tensor.th")
    with pytest.raises(CheckpointError, match="not in the layout of akamaster/pytorch_resnet_cifar10: that is a "
                                              "dict with a state_dict, this is a Tensor"):
        import_checkpoint(tmp_path / "tensor.th", tmp_path / "a")
    torch.save(published_state(1), tmp_path / "bare.th")
    with pytest.raises(CheckpointError, match="this is a dict of module.bn1.bias"):
        import_checkpoint(tmp_path / "bare.th", tmp_path / "a")

    torchvision_like = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64),
                        "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3), "layer4.0.downsample.0.weight":
                        torch.zeros(512, 256, 1, 1), "fc.weight": torch.zeros(1000, 512)}
    torch.save({"state_dict": torchvision_like}, tmp_path / "imagenet.th")
    with pytest.raises(CheckpointError, match=r"does not fit ResNet-8 .*first_num_filters 64.*missing: bn1.bias, "
                                              r".*unexpected: layer4.0.downsample.0.weight, fc.weight; of another "
                                              r"shape: conv1.weight \[64, 3, 7, 7\] \(needs \[64, 3, 3, 3\]\)"):
        import_checkpoint(tmp_path / "imagenet.th", tmp_path / "a")

    state = published_state(2)
    option_b = {**state, "module.layer2.0.shortcut.0.weight": torch.zeros(32, 16, 1, 1)}
    del option_b["module.layer3.1.bn2.bias"]
    torch.save({"state_dict": option_b}, tmp_path / "option_b.th")
    with pytest.raises(CheckpointError, match=r"does not fit ResNet-14 .*; missing: layer3.1.bn2.bias; "
                                              r"unexpected: layer2.0.shortcut.0.weight$"):
        import_checkpoint(tmp_path / "option_b.th", tmp_path / "a")
    torch.save({"state_dict": {"features.0.weight": torch.zeros(8, 3, 3, 3)}}, tmp_path / "vgg.th")
    with pytest.raises(CheckpointError, match="not a CIFAR-10 ResNet .* its weights are features.0.weight"):
        import_checkpoint(tmp_path / "vgg.th", tmp_path / "a")
    assert not (tmp_path / "a").exists(), "a refused file leaves no modeldir behind"


def test_a_file_that_needs_unsafe_loading_is_refused_without_the_flag(tmp_path):
    state = published_state(1)
    torch.save({"state_dict": state, "best_prec1": np.float64(91.73)}, tmp_path / "numpy.th")
    with pytest.raises(CheckpointError, match=r"safe loading \(torch.load with weights_only=True\) refuses "
                                              r"\(numpy.*scalar\).*pass allow_unsafe_load=True;"):
        import_checkpoint(tmp_path / "numpy.th", tmp_path / "run")
    assert cli.main(["import", str(tmp_path / "numpy.th"), "--modeldir", str(tmp_path / "run")]) == 2
    path, _ = import_checkpoint(tmp_path / "numpy.th", tmp_path / "run", allow_unsafe_load=True)
    torch.testing.assert_close(Checkpoint.load(path).model["start_layer.0.weight"], state["module.conv1.weight"])


def test_a_checkpoint_from_before_the_shortcut_choice_restores_as_projection(tmp_path):
    model = ResNet(1, 1, first_num_filters=4)
    config = dataclasses.asdict(Config(resnet_size=1, first_num_filters=4))
    del config["shortcut"]
    torch.save({"model": model.state_dict(), "config": config, "mean": [0, 0, 0], "std": [1, 1, 1]},
               tmp_path / "model-1.ckpt")  # as hw2 wrote it then
    restored, checkpoint = restore(tmp_path / "model-1.ckpt", "cpu")
    assert checkpoint.config["shortcut"] == "projection"
    assert restored.stack_layers[1][0].projection_shortcut is not None


@pytest.mark.parametrize("prefix", ["", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_names_saved_compiled_or_data_parallel_import_as_the_published_ones(prefix, tmp_path, cifar_dir, capsys):
    """The published ResNet-20's names with torch.compile's and (Distributed)DataParallel's prefixes, in place of
    its "module.": the same checkpoint, which tests the same."""
    published = write_published(tmp_path / "resnet20.th", 3)
    torch.save({"state_dict": {prefix + name.removeprefix("module."): value for name, value in published.items()}},
               tmp_path / "wrapped.th")
    tested = []
    for name in ("resnet20.th", "wrapped.th"):
        modeldir = tmp_path / name.removesuffix(".th")
        assert cli.main(["import", str(tmp_path / name), "--modeldir", str(modeldir)]) == 0
        capsys.readouterr()
        assert cli.main(["test", "--modeldir", str(modeldir), "--data_dir", str(cifar_dir), "--device", "cpu",
                         "--dtype", "float32"]) == 0
        tested.append(capsys.readouterr().out.replace(str(modeldir), "RUN"))
    original, wrapped = (Checkpoint.load(tmp_path / run / "model-0.ckpt").model for run in ("resnet20", "wrapped"))
    assert original.keys() == wrapped.keys() and all(torch.equal(original[k], wrapped[k]) for k in original)
    assert tested[0] == tested[1] and "Test accuracy: " in tested[0]


def wrapped_names(modeldir):
    """The names in modeldir's checkpoints (the network's, and its moving average's) that carry a wrapper's prefix,
    and how many checkpoints there are."""
    paths = list(modeldir.glob("*.ckpt"))
    checkpoints = [Checkpoint.load(path) for path in paths]
    return [name for c in checkpoints for name in [*c.model, *c.average] if WRAPPED.match(name)], len(paths)


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_a_compiled_run_checkpoints_its_network_unwrapped(backend, cifar_dir, tmp_path, monkeypatch, capsys):
    """torch.compile's module names its weights "_orig_mod.*"; the run checkpoints the network it wraps. The eager
    backend makes the same wrapper without inductor's C++ build (seconds instead of a minute)."""
    compile, compiled = torch.compile, []

    def compile_with_backend(model):
        compiled.append(compile(model, backend=backend))
        return compiled[-1]

    monkeypatch.setattr(torch, "compile", compile_with_backend)
    train(small_config(cifar_dir, tmp_path, epochs=1, compile=True, ema_decay=0.9), Lines())
    assert "torch.compile failed" not in capsys.readouterr().out, "the run was compiled"
    assert all(name.startswith("_orig_mod.") for name in compiled[0].state_dict())
    wrapped, checkpoints = wrapped_names(tmp_path / "model")
    assert checkpoints == 2 and wrapped == []  # model-1.ckpt and model-best.ckpt


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True])
def test_a_data_parallel_run_checkpoints_its_network_unwrapped(compiled, cifar_dir, tmp_path):
    """Two processes under torchrun (tests/test_distributed.py), whose network DistributedDataParallel wraps
    ("module.*"), and torch.compile too ("_orig_mod.*") where `compiled`."""
    run = torchrun({**SETTINGS, "data_dir": str(cifar_dir), "compile": compiled, "ema_decay": 0.9}, tmp_path)
    assert "torch.compile failed" not in run.stdout, "the run was compiled"
    wrapped, checkpoints = wrapped_names(tmp_path / "model0")
    assert checkpoints == 3 and wrapped == []  # model-1.ckpt, model-2.ckpt and model-best.ckpt

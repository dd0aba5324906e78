"""torch.hub entries (hubconf.py): each builds the network of its name with He et al.'s parameter counts and takes
float RGB images in [0, 1], normalising them inside; resnet20's pretrained weights are the bundled ResNet-20 and
give its recorded test accuracy, loaded offline; the other entries refuse pretrained=True."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hw2.augment import channel_stats
from hw2.checkpoint import PRETRAINED
from hw2.data import CIFAR100_CLASSES, CLASSES, load_data, load_test_data
from hw2.errors import ConfigError
from hw2.evaluate import restore
from hw2.export import TRAINING_STATS, Classifier
from hw2.models import ResNet, count_parameters

ROOT = Path(__file__).resolve().parent.parent

# entry: (resnet_version, resnet_size, its parameters, He et al.'s published count in millions). Version 1 has hw2's
# default projection shortcuts, where He et al.'s counts are of zero-padding ones (option A), as
# akamaster/pytorch_resnet_cifar10 counts them exactly: OPTION_A.
ENTRIES = {
    "resnet20": (1, 3, 272_474, 0.27),
    "resnet32": (1, 5, 466_906, 0.46),
    "resnet44": (1, 7, 661_338, 0.66),
    "resnet56": (1, 9, 855_770, 0.85),
    "resnet110": (1, 18, 1_730_714, 1.7),
    "preact_resnet164": (2, 18, 1_703_258, 1.7),  # He et al. 2016; version 2 has projections only
}
OPTION_A = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018, "resnet110": 1_727_962}
# A projection adds a 1x1 convolution and a BN (2 parameters a channel) at each of the two stacks that change the
# shape: 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64 parameters.
PROJECTIONS = 2_752


def hub(entry, **kwargs):
    return torch.hub.load(str(ROOT), entry, source="local", **kwargs)


@pytest.mark.parametrize("entry", ENTRIES)
def test_each_entry_builds_the_network_of_its_name(entry):
    version, size, parameters, published = ENTRIES[entry]
    model = hub(entry)
    assert isinstance(model, Classifier) and model.training, "untrained: ready to train"
    network = model.network
    assert (network.resnet_version, network.resnet_size) == (version, size)
    assert f"resnet{network.depth}" in entry
    assert count_parameters(model) == count_parameters(network) == parameters  # the normalisation is buffers only
    he_et_al = OPTION_A[entry] if version == 1 else parameters
    assert round(he_et_al / 1e6, 2 if published < 1 else 1) == published
    if version == 1:
        assert count_parameters(ResNet(1, size, shortcut="identity")) == OPTION_A[entry] == parameters - PROJECTIONS
    assert model.classes == CLASSES
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_the_model_normalises_images_in_0_1_as_training_normalises_pixels():
    model = hub("resnet20").eval()
    pixels = torch.randint(0, 256, (4, 3, 32, 32)).float()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in TRAINING_STATS["cifar10"])
    with torch.no_grad():
        torch.testing.assert_close(model(pixels / 255), model.network((pixels - mean) / std), rtol=1e-5, atol=1e-5)


def test_the_untrained_statistics_are_those_of_the_training_images(real_data_dir):
    x_train = load_data(real_data_dir)[0]
    mean, std = channel_stats(x_train)
    # the published figures are of the official PNGs; the stand-in's JPEG re-encoding smooths them a little
    np.testing.assert_allclose(mean, TRAINING_STATS["cifar10"][0], atol=0.1)
    np.testing.assert_allclose(std, TRAINING_STATS["cifar10"][1], atol=0.5)


def test_resnet_builds_any_of_hw2s_networks():
    model = hub("resnet", resnet_version=2, resnet_size=1, first_num_filters=8, num_classes=100)
    assert (model.network.resnet_version, model.network.depth, model.network.start_layer[0].out_channels) == (2, 11, 8)
    assert model.classes == CIFAR100_CLASSES and model(torch.rand(1, 3, 32, 32)).shape == (1, 100)
    np.testing.assert_allclose(model.mean.flatten(), TRAINING_STATS["cifar100"][0])
    with pytest.raises(ConfigError, match=r"^num_classes must be one of 10 \(cifar10\), 100 \(cifar100\), the data "
                                          r"sets whose classes and statistics the model knows; got 7$"):
        hub("resnet", num_classes=7)
    with pytest.raises(ConfigError, match="resnet_size must be an integer >= 1, got 0"):
        hub("resnet", resnet_size=0)


@pytest.mark.parametrize("entry", [*[name for name in ENTRIES if name != "resnet20"], "resnet"])
def test_pretrained_is_refused_where_there_are_no_weights(entry):
    with pytest.raises(ConfigError, match=rf"^{entry} has no pretrained weights \(only resnet20 has\); load it with "
                                          r"pretrained=False and train it, or load resnet20 with pretrained=True$"):
        hub(entry, pretrained=True)


def test_pretrained_resnet20_is_the_bundled_network_loaded_offline(monkeypatch):
    def refuse(*args):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    model = hub("resnet20", pretrained=True)
    assert not model.training, "ready to classify"
    untrained = hub("resnet20").state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in untrained.items()}
    network, checkpoint = restore(PRETRAINED, "cpu")
    assert all(torch.equal(value, network.state_dict()[name]) for name, value in model.network.state_dict().items())
    np.testing.assert_allclose([model.mean.flatten(), model.std.flatten()], [checkpoint.mean, checkpoint.std])


@pytest.mark.slow  # 10,000 images through the network unfolded: about a minute on 2 busy cores
def test_pretrained_resnet20_gives_the_recorded_test_accuracy(real_data_dir):
    """The accuracy hw2/pretrained/resnet20_v1.json records, of float32 evaluation on the stand-in's test images."""
    model = hub("resnet20", pretrained=True)
    x_test, y_test = load_test_data(real_data_dir)
    images = torch.from_numpy(x_test).view(-1, 3, 32, 32).float() / 255
    with torch.no_grad():
        predicted = torch.cat([model(batch).argmax(1) for batch in images.split(500)])
    record = json.loads(PRETRAINED.with_suffix(".json").read_text())
    assert record["dtype"] == "float32"  # as the hub model computes
    assert round((predicted.numpy() == y_test).mean(), 4) == record["test_accuracy"]


def test_hubconf_declares_what_it_imports_beyond_torch():
    """torch.hub checks `dependencies` before it loads an entry: they must name every package hubconf imports that
    torch itself does not."""
    code = ("import json, sys, torch; before = {m.split('.')[0] for m in sys.modules}; import hubconf; "
            "imported = {m.split('.')[0] for m in sys.modules} - before - set(sys.stdlib_module_names); "
            "print(json.dumps([sorted(imported - {'hubconf', 'hw2'}), hubconf.dependencies]))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    imported, dependencies = json.loads(run.stdout)
    assert set(imported) <= set(dependencies)


def test_the_docs_give_the_projections_and_he_et_als_counts():
    page = (ROOT / "docs" / "tools.md").read_text()
    published = ", ".join(f"{ENTRIES[entry][3]}M" for entry in OPTION_A)
    assert f"{PROJECTIONS:,} parameters more" in page and f"counts ({published})" in page

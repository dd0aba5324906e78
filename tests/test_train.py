import csv
import math
import subprocess
import sys

import pytest
import torch

from hw2.checkpoint import load_checkpoint
from hw2.config import FAST_RECIPE, Config
from hw2.train import METRICS, get_image_size, get_lr, train


def small(cifar_dir, tmp_path, **overrides):
    """A seconds-long run: ResNet-8 at 8 filters on 160 synthetic training images (40 held out)."""
    settings = dict(resnet_size=1, first_num_filters=8, batch_size=20, epochs=3, learning_rate=0.05,
                    lr_milestones=[2], valid_size=40, save_interval=2, data_dir=str(cifar_dir),
                    modeldir=str(tmp_path / "model"), device="cpu")
    settings.update(overrides)
    return Config(**settings)


def read_metrics(modeldir):
    with open(modeldir / "metrics.csv") as f:
        return list(csv.DictReader(f))


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
    config = Config(epochs=16, resize_fraction=0.75, min_image_size=16)
    assert [get_image_size(e, config) for e in range(16)] == [16] * 3 + [20] * 3 + [24] * 3 + [28] * 3 + [32] * 4
    assert {get_image_size(e, Config(epochs=5)) for e in range(5)} == {32}, "off by default"
    assert get_image_size(0, Config(epochs=4, resize_fraction=0.5, min_image_size=18)) == 18
    assert [get_image_size(e, Config(**{**FAST_RECIPE, "epochs": 7})) for e in range(7)] == [16, 16, 20, 24, 28, 28, 32]


@pytest.mark.parametrize("field,value", [("resnet_version", 3), ("resnet_size", 0), ("batch_size", 0),
                                         ("learning_rate", 0), ("learning_rate", -1), ("device", "tpu"),
                                         ("lr_schedule", "linear"), ("dtype", "float16"), ("epochs", 0),
                                         ("on_nan", "ignore"), ("valid_size", -1), ("resize_fraction", 1.0),
                                         ("min_image_size", 4)])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Config(**{field: value})


def test_unknown_notebook_parameter_is_an_error():
    assert Config.from_parameters(["resnet_size"], {"resnet_size": 5}).resnet_size == 5
    with pytest.raises(ValueError, match="resnet_sise"):
        Config.from_parameters(["resnet_sise"], {"resnet_sise": 5})


def test_defaults_are_he_et_al_recipe():
    c = Config()
    assert (c.batch_size, c.learning_rate, c.momentum, c.weight_decay, c.epochs, c.lr_milestones, c.valid_size) == \
        (128, 0.1, 0.9, 1e-4, 182, [91, 136], 5000)
    assert set(FAST_RECIPE) <= {f for f in c.__dataclass_fields__}


def test_train_writes_checkpoints_metrics_and_the_epoch_line(cifar_dir, tmp_path, capsys):
    config = small(cifar_dir, tmp_path)
    model, metrics = train(config)
    modeldir = tmp_path / "model"
    assert sorted(p.name for p in modeldir.glob("*.ckpt")) == ["model-2.ckpt", "model-3.ckpt"]
    rows = read_metrics(modeldir)
    assert list(rows[0]) == METRICS and [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # the learning-rate change reaches the optimizer: the column is read back from it
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05, 0.05, 0.005])
    assert float(rows[-1]["train_acc"]) > 0.3 and float(rows[-1]["valid_acc"]) > 0.3  # chance is 0.1
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    out = capsys.readouterr().out
    assert [line.split(" Duration")[0] for line in out.splitlines() if line.startswith("Epoch ")] == \
        [f"Epoch {r['epoch']} Loss {float(r['train_loss']):.4f}" for r in rows]
    checkpoint = load_checkpoint(modeldir / "model-3.ckpt")
    assert checkpoint["epoch"] == 3 and checkpoint["config"]["resnet_size"] == 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in checkpoint["model"].items())


def test_progressive_resizing_trains_on_smaller_images_then_32(cifar_dir, tmp_path, monkeypatch):
    import hw2.train
    sizes = []

    class Recording(hw2.train.ResNet):
        def forward(self, x):
            if self.training:  # validation traces the network with torch.fx
                sizes.append(tuple(x.shape[2:]))
            return super().forward(x)

    monkeypatch.setattr(hw2.train, "ResNet", Recording)
    _, metrics = train(small(cifar_dir, tmp_path, resize_fraction=0.5, min_image_size=16))
    assert sizes == [(16, 16)] * 8 + [(24, 24)] * 8 + [(32, 32)] * 8  # 160 images, batch 20
    assert all(math.isfinite(row["train_loss"]) for row in metrics)


def test_same_seed_same_weights(cifar_dir, tmp_path):
    a, _ = train(small(cifar_dir, tmp_path / "a", epochs=1))
    b, _ = train(small(cifar_dir, tmp_path / "b", epochs=1))
    c, _ = train(small(cifar_dir, tmp_path / "c", epochs=1, seed=1))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.output_layer.fc.weight, c.output_layer.fc.weight)


def test_cli_train_then_test(cifar_dir, tmp_path):
    modeldir = tmp_path / "model_v1"
    common = ["--resnet_size", "1", "--first_num_filters", "8", "--data_dir", str(cifar_dir), "--modeldir", str(modeldir)]
    run = subprocess.run([sys.executable, "-m", "hw2", "train", *common, "--epochs", "2", "--batch_size", "20",
                          "--valid_size", "40", "--save_interval", "1", "--lr_milestones", "1"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Epoch 2 Loss" in run.stdout
    test = subprocess.run([sys.executable, "-m", "hw2", "test", *common, "--checkpoint", "1", "2"],
                          capture_output=True, text=True, timeout=300)
    assert test.returncode == 0, test.stderr
    lines = test.stdout.splitlines()
    assert f"Restored model parameters from {modeldir / 'model-1.ckpt'}" in lines
    accuracies = [float(l.split(": ")[1]) for l in lines if l.startswith("Test accuracy: ")]
    assert len(accuracies) == 2 and all(0 <= a <= 1 for a in accuracies)
    bad = subprocess.run([sys.executable, "-m", "hw2", "train", "--resnet_version", "3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "resnet_version must be 1 or 2" in bad.stderr


def test_fast_recipe_flag_sets_the_recipe_and_explicit_flags_win(monkeypatch):
    from hw2 import __main__ as cli
    seen = {}
    monkeypatch.setattr(cli, "train", lambda config: seen.setdefault("config", config))
    assert cli.main(["train", "--recipe", "fast", "--epochs", "7"]) == 0
    config = seen["config"]
    assert config.lr_schedule == "cosine" and config.label_smoothing == FAST_RECIPE["label_smoothing"]
    assert config.epochs == 7

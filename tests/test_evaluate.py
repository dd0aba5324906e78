import numpy as np
import pytest
import torch

from hw2.config import Config
from hw2.errors import CheckpointError
from hw2.evaluate import checkpoints_to_test, evaluate, evaluate_checkpoints, fold_batchnorm
from hw2.events import Lines
from hw2.models import ResNet
from conftest import untrained_checkpoint


def test_evaluate_counts_every_image_once_and_builds_the_confusion_matrix(monkeypatch):
    torch.manual_seed(0)
    model = ResNet(1, 1, first_num_filters=4)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (25, 3072)).astype(np.uint8), rng.integers(0, 10, 25)
    monkeypatch.setattr("hw2.evaluate.evaluation_batch_size", lambda device: 10)  # 25 images: 3 batches, the last partial
    result = evaluate(model, x, y, ([120.0] * 3, [60.0] * 3), device="cpu")
    confusion = result["confusion"]
    assert confusion.sum() == 25 and confusion.shape == (10, 10)
    assert torch.equal(confusion.sum(1), torch.bincount(torch.from_numpy(y), minlength=10))
    assert result["accuracy"] == pytest.approx(confusion.diag().sum().item() / 25)
    assert torch.equal(result["confusion"][torch.from_numpy(y), result["predicted"]] > 0, torch.ones(25, dtype=torch.bool))
    assert result["logits"].shape == (25, 10) and torch.equal(result["logits"].argmax(1), result["predicted"])
    assert model.training, "evaluation leaves the model's mode as it was"


def test_evaluate_runs_a_copy_on_the_device_and_never_moves_the_callers_model(monkeypatch):
    model = ResNet(1, 1, first_num_filters=4)
    moved, to = [], torch.nn.Module.to

    def recorded(self, *args, **kwargs):
        moved.append(self)
        return to(self, *args, **kwargs)
    monkeypatch.setattr(torch.nn.Module, "to", recorded)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (5, 3072)).astype(np.uint8), rng.integers(0, 10, 5)
    result = evaluate(model, x, y, ([120.0] * 3, [60.0] * 3), device="cpu")
    assert moved and not any(m is model for m in moved), "only the folded copy is moved to the device"
    assert result["predicted"].shape == (5,) and result["predicted"].dtype == torch.int64


@pytest.mark.parametrize("version, unfolded", [(1, 0), (2, 6 - 1 + 1)])
def test_fold_batchnorm_computes_the_same_function_with_fewer_batchnorms(version, unfolded):
    torch.manual_seed(0)
    model = ResNet(version, 2, first_num_filters=4)
    for m in model.modules():  # running statistics and affine parameters far from the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.2, 3)
            m.weight.data.uniform_(0.5, 2), m.bias.data.uniform_(-1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4)
    # Version 1: every BN follows a convolution. Version 2: the first BN of each of the 6 blocks follows an
    # addition, except in the first block, where it follows the start convolution; the output layer's BN
    # follows the last addition.
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) == unfolded
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the model itself is unchanged"


def test_checkpoints_to_test_are_the_newest_or_the_epochs_asked_for(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints in .*or point modeldir at a run$"):
        checkpoints_to_test(tmp_path)
    for name in ("model-10.ckpt", "model-2.ckpt", "model-11-step5.ckpt"):
        (tmp_path / name).touch()
    assert checkpoints_to_test(tmp_path) == [tmp_path / "model-11-step5.ckpt"]
    assert checkpoints_to_test(tmp_path, [2, 10]) == [tmp_path / "model-2.ckpt", tmp_path / "model-10.ckpt"]
    with pytest.raises(CheckpointError, match=r"has no model-3.ckpt; it has model-2.ckpt, model-10.ckpt, "
                                              r"model-11-step5.ckpt\. Choose epochs with checkpoints$"):
        checkpoints_to_test(tmp_path, [2, 3])


def test_checkpoints_to_test_take_best_for_model_best_ckpt(tmp_path):
    (tmp_path / "model-2.ckpt").touch()
    with pytest.raises(CheckpointError, match=r"has no model-best.ckpt; it has model-2.ckpt\. Choose epochs with "):
        checkpoints_to_test(tmp_path, ["best"])
    (tmp_path / "model-best.ckpt").touch()
    assert checkpoints_to_test(tmp_path, ["best", 2]) == [tmp_path / "model-best.ckpt", tmp_path / "model-2.ckpt"]
    assert checkpoints_to_test(tmp_path) == [tmp_path / "model-2.ckpt"], "the newest is the newest epoch's"


def test_evaluate_checkpoints_prints_like_the_cli_and_matches_evaluate(tmp_path, capsys):
    path = tmp_path / "model-1.ckpt"
    model = untrained_checkpoint(path, resnet_size=1, first_num_filters=4)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (30, 3072)).astype(np.uint8), rng.integers(0, 10, 30)
    [result] = evaluate_checkpoints([path], x, y, device="cpu", report=Lines())
    expected = evaluate(model, x, y, ([120.0, 120.0, 110.0], [60.0, 60.0, 65.0]), device="cpu")
    assert result["accuracy"] == pytest.approx(expected["accuracy"])
    assert capsys.readouterr().out == f"Restored model parameters from {path}\nTest accuracy: {expected['accuracy']:.4f}\n"


def test_evaluate_checkpoints_use_the_tta_of_the_run_unless_told_otherwise(tmp_path, capsys):
    path = tmp_path / "model-1.ckpt"
    model = untrained_checkpoint(path, resnet_version=2, resnet_size=1, first_num_filters=4, tta=True)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (30, 3072)).astype(np.uint8), rng.integers(0, 10, 30)
    mean, std = [120.0, 120.0, 110.0], [60.0, 60.0, 65.0]
    flip, plain = (evaluate(model, x, y, (mean, std), device="cpu", tta=tta)["loss"] for tta in (True, False))
    assert flip != pytest.approx(plain)
    lines = Lines()
    assert evaluate_checkpoints([path], x, y, device="cpu", report=lines)[0]["loss"] == pytest.approx(flip)
    assert "flip test-time augmentation" in capsys.readouterr().out
    assert evaluate_checkpoints([path], x, y, device="cpu", tta=False, report=lines)[0]["loss"] == pytest.approx(plain)
    assert "flip" not in capsys.readouterr().out


def test_evaluate_checkpoints_refuses_another_network(tmp_path):
    path = tmp_path / "model-1.ckpt"
    untrained_checkpoint(path, resnet_size=1, first_num_filters=4)
    x, y = np.zeros((2, 3072), np.uint8), np.zeros(2, np.int64)
    with pytest.raises(CheckpointError, match="model-1.ckpt holds a network with resnet_version 1, resnet_size 1, "
                                              "first_num_filters 4, shortcut projection, num_classes 10, not resnet_size 3: "):
        evaluate_checkpoints([path], x, y, device="cpu", architecture={"resnet_version": 1, "resnet_size": 3})
    with pytest.raises(CheckpointError, match="not resnet_size 3, first_num_filters 16"):
        evaluate_checkpoints([path], x, y, device="cpu", architecture=Config())

"""The moving average of the weights (Config.ema_decay): its arithmetic, and that validation, the checkpoints,
testing and exact resume all use it."""
import dataclasses

import pytest
import torch

from conftest import small_config
from hw2.checkpoint import Checkpoint
from hw2.errors import Interrupted
from hw2.evaluate import restore
from hw2.models import ResNet
from hw2.state import WeightAverage
from hw2.train import _StopRequests, train


def test_the_average_moves_toward_the_weights_by_one_minus_the_warmed_up_decay():
    model = ResNet(1, 1, first_num_filters=8)
    average = WeightAverage(model, decay=0.99)
    start = {name: t.clone() for name, t in average.model.state_dict().items()}
    with torch.no_grad():
        for t in [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]:
            t.add_(1.0)
    average.update(global_step=0)  # decay min(0.99, 1/10): the average takes 0.9 of the way
    average.update(global_step=1000)  # decay min(0.99, 1001/1010) = 0.99: 0.01 of the rest
    for name, value in average.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, start[name] + 0.9 + 0.1 * 0.01, msg=name)
        else:  # num_batches_tracked: not averaged
            assert torch.equal(value, start[name])
    assert all(not p.requires_grad for p in average.model.parameters())


def test_a_run_with_a_moving_average_validates_checkpoints_tests_and_resumes_it_exactly(cifar_dir, tmp_path,
                                                                                       monkeypatch):
    config = small_config(cifar_dir, tmp_path, ema_decay=0.9, save_interval=1)
    whole, metrics = train(dataclasses.replace(config, modeldir=str(tmp_path / "whole")))
    path = tmp_path / "whole" / "model-3.ckpt"
    checkpoint = Checkpoint.load(path)
    assert set(checkpoint.average) == set(checkpoint.model)
    assert not torch.equal(checkpoint.average["output_layer.fc.weight"], checkpoint.model["output_layer.fc.weight"])
    assert all(torch.equal(whole.state_dict()[name], value) for name, value in checkpoint.average.items()), \
        "train() returns the average"
    tested, _ = restore(path, "cpu")
    assert all(torch.equal(tested.state_dict()[name], value) for name, value in checkpoint.average.items())

    plain, plain_metrics = train(dataclasses.replace(config, ema_decay=0.0, modeldir=str(tmp_path / "plain")))
    assert [row["train_loss"] for row in plain_metrics] == [row["train_loss"] for row in metrics], \
        "the average does not change the training itself"
    assert [row["valid_loss"] for row in plain_metrics] != [row["valid_loss"] for row in metrics], \
        "validation is the average's"

    calls = []
    monkeypatch.setattr(_StopRequests, "requested", lambda self, world, device: calls.append(1) or len(calls) == 8 + 3)
    with pytest.raises(Interrupted):  # at step 3 of epoch 2 (8 steps an epoch)
        train(config)
    monkeypatch.undo()
    resumed, resumed_metrics = train(dataclasses.replace(config, resume=True))
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()))
    assert [row["valid_loss"] for row in resumed_metrics] == [row["valid_loss"] for row in metrics]

"""What one run trains, as one object (TrainingState: the network, SGD, the loss scaler, the weights' moving average
and the position in the data, with state_dict()/load_state_dict(), which a Checkpoint holds), and the running
totals of an epoch. hw2.train's loop steps and saves it.
"""
import copy
import itertools
import time

import torch
import torch.distributed as dist

from hw2.models import build_network
from hw2.runtime import fused_sgd_can_skip, grad_scaler, sum_dtype


def make_optimizer(model, learning_rate=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4):
    """SGD with the fused kernel, which can skip an update on a flag that stays on the device (train_step), or
    the plain one where the fused kernel cannot (MPS). Momentum buffers start at zero rather than empty, so that
    skipping the very first step leaves them defined; with no dampening a zero buffer gives the same first
    step as PyTorch's copy of the gradient."""
    fused = fused_sgd_can_skip(next(model.parameters()).device)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum, nesterov=nesterov,
                                weight_decay=weight_decay, fused=fused)
    for p in model.parameters():
        optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return optimizer


class EpochTotals:
    """Loss, correct predictions and images of one epoch's stepped batches, summed on the device (adding to
    them never waits for it), and the seconds spent; `partial()` is what a mid-epoch checkpoint keeps."""

    NONE = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}  # the totals of an epoch not yet begun

    def __init__(self, device, partial=None):
        partial = partial or self.NONE
        self.sums = torch.tensor([partial["loss"], partial["correct"], partial["seen"]], dtype=sum_dtype(device),
                                 device=device)
        self.skipped = torch.zeros((), dtype=torch.long, device=device)
        self.first_skipped = torch.full((), -1, dtype=torch.long, device=device)
        self.earlier_seconds, self.started = partial["seconds"], time.perf_counter()

    def add(self, step, loss, logits, labels, finite):
        n, dtype = len(labels), self.sums.dtype
        batch = torch.stack([loss.detach().to(dtype) * n, (logits.argmax(1) == labels).sum().to(dtype),
                             self.sums.new_full((), n)])  # new_full: a fill on the device, not a copy from the host
        self.sums += torch.where(finite, batch, 0.0)  # where, not a product: a NaN times 0 is NaN
        self.first_skipped = torch.where(~finite & (self.first_skipped < 0), step, self.first_skipped)
        self.skipped += ~finite

    def seconds(self):
        return self.earlier_seconds + time.perf_counter() - self.started

    def partial(self):
        loss, correct, seen = self.sums.tolist()
        return {"loss": loss, "correct": int(correct), "seen": int(seen), "seconds": self.seconds()}

    def means(self, world):
        """(train loss, train accuracy) over all processes' images."""
        sums = self.sums.clone()
        if world > 1:
            dist.all_reduce(sums)
        loss, correct, seen = sums.tolist()
        return (loss / seen, correct / seen) if seen else (float("nan"), float("nan"))


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics (its floating-point parameters
    and buffers), kept in a copy of the model (`model`) that validation, the checkpoints and testing use. The
    decay at global step g is min(decay, (1 + g) / (10 + g)): early on the average follows the weights closely and
    so forgets their random start, and as a function of g alone it resumes exactly."""

    def __init__(self, model, decay):
        self.decay, self.model = decay, copy.deepcopy(model).requires_grad_(False)
        self.averages, self.currents = self._tensors(self.model), self._tensors(model)

    @staticmethod
    def _tensors(model):
        return [t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()]

    @torch.no_grad()
    def update(self, global_step):
        weight = 1 - min(self.decay, (1 + global_step) / (10 + global_step))
        # one fused call for all tensors, as torch.optim's own updates do: a loop would launch one tiny kernel
        # per tensor in every step (107 for ResNet-20), which on a GPU costs as much as a good part of the step
        torch._foreach_lerp_(self.averages, self.currents, weight)


class TrainingState:
    """What one run trains, as one object: the network (`model`), SGD, float16's loss scaler, the weights' moving
    average where ema_decay asks for one, the metrics rows so far, and the position in the data: `epoch` whole
    epochs and `step` steps into the next, with that stopped epoch's running totals (`partial`). A Checkpoint
    holds its state_dict(), beside the run's config and normalisation."""

    def __init__(self, config, device, dtype):
        torch.manual_seed(config.seed)  # initialisation; batches and augmentation draw from their own generators
        self.model = build_network(config).to(device, memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, config.learning_rate, config.momentum, config.nesterov,
                                        config.weight_decay)
        self.scaler = grad_scaler(device, dtype)
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.epoch, self.step, self.partial, self.metrics = 0, 0, None, []

    @property
    def evaluated(self):
        """The network that validation, testing and the user get: the moving average where there is one."""
        return self.average.model if self.average else self.model

    def state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else {},
                "average": self.average.model.state_dict() if self.average else {},
                "epoch": self.epoch, "step": self.step, "partial": self.partial or EpochTotals.NONE,
                "metrics": self.metrics}

    def load_state_dict(self, state):
        """Continue from `state` (a state_dict, or a Checkpoint's fields). An imported network has no optimizer
        state: fine-tuning starts SGD afresh; a checkpoint without an average (another run's, an imported
        network) starts the average from its weights."""
        self.model.load_state_dict(state["model"])
        if self.average:
            self.average.model.load_state_dict(state["average"] or state["model"])
        if state["optimizer"]:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.metrics = state["epoch"], state["step"], state["metrics"]
        self.partial = state["partial"] if state["step"] else None

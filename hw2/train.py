"""Training: a pure learning-rate schedule, one SGD step, and `train(config)`, whose loop (_train) trains the
state of one run (hw2.state.TrainingState) and writes modeldir/model-{epoch}.ckpt and metrics.csv as it goes.

Runs survive interruption: every checkpoint is written atomically, `resume` continues from the newest one
exactly (batch order and augmentation are pure functions of seed, epoch and step), and SIGINT/SIGTERM stop
after the current step with a checkpoint. The step never waits for the device: whether a loss was finite is
decided on the device (the fused SGD kernel skips the update), and the host looks every CHECK_EVERY steps.

Training prints nothing: what happens goes to a hw2.events.Reporter, which each front end renders, and what the
reporter shows is kept in modeldir/log.txt; with `tensorboard`, TensorBoard's event files in modeldir/tensorboard/
are written as well (hw2.tensorboard). What the modeldir holds and whether a run may continue the one in it is
hw2.modeldir's.
"""
import contextlib
import dataclasses
import math
import os
import signal
import threading
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hw2.augment import SIZE, Loader, channel_stats, channel_tensors
from hw2.checkpoint import Checkpoint, check_architecture
from hw2.data import download, load_data, reports_top5, train_valid_split
from hw2.errors import ConfigError, Interrupted, TrainingDiverged, field
from hw2.evaluate import evaluate
from hw2.events import Reporter
from hw2.modeldir import (TENSORBOARD, claim, latest_checkpoint, list_checkpoints, open_log, save_best,
                          save_checkpoint, write_config, write_metrics)
from hw2.runtime import autocast, dtype_name, resolve_device, resolve_dtype, stop_signals, use_fastest_kernels
from hw2.state import EpochTotals, TrainingState
from hw2.tensorboard import TensorBoardReport, require_tensorboard

# steps between the host's looks at the device's non-finite count, at the processes' stop flags and, with
# tensorboard, at a step's loss
CHECK_EVERY = 50


def get_lr(progress, config):
    """Learning rate at `progress` epochs into the run (fractional: epoch e, step s of n is e + s / n)."""
    if progress < config.warmup_epochs:
        return config.learning_rate * progress / config.warmup_epochs
    if config.lr_schedule == "cosine":
        t = (progress - config.warmup_epochs) / (config.epochs - config.warmup_epochs)
        return config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return config.learning_rate * 0.1 ** sum(progress >= m for m in config.lr_milestones)


def get_image_size(epoch, config):
    """Side of the training images in epoch `epoch` (0-based): with progressive resizing, min_image_size
    growing linearly over the first resize_fraction of the epochs, rounded down to a multiple of 4; then 32."""
    resize_epochs = config.resize_fraction * config.epochs
    if epoch >= resize_epochs:
        return SIZE
    size = config.min_image_size + (SIZE - config.min_image_size) * epoch / resize_epochs
    return max(config.min_image_size, int(size) // 4 * 4)


def train_step(network, optimizer, images, labels, device, dtype, label_smoothing=0.0, scaler=None):
    """One SGD step -> (loss, logits, finite), finite a bool tensor on the device. A non-finite loss (on any
    process) takes no step, and nothing here waits for the device to find out. With float16 a GradScaler
    (`scaler`) scales the loss and skips steps whose gradients overflowed."""
    with autocast(device, dtype):
        logits = network(images)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    finite = torch.isfinite(loss)
    if dist.is_initialized():  # every process must skip the same steps, or the replicas part ways
        finite = finite.int()
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        finite = finite.bool()
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # a non-finite loss makes non-finite gradients: the scaler skips the step
        scaler.update()
    else:
        loss.backward()
        if optimizer.defaults.get("fused"):
            optimizer.found_inf = (~finite).float()  # the fused kernel skips the whole update when this is 1
            optimizer.step()
        elif finite:  # a plain optimizer cannot skip on the device, so this waits for it
            optimizer.step()
    return loss, logits, finite


class _StopRequests:
    """The first stop signal (SIGINT, and SIGTERM on Unix or SIGBREAK on Windows: runtime.stop_signals) asks the
    loop to stop after the current step, reported to `report`; a second one stops at once."""

    def __init__(self, report=None):
        self.signum, self.previous, self.report = None, {}, report or Reporter()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for s in stop_signals():
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.report.stopping(signal.Signals(signum).name)

    def requested(self, world, device):
        """Whether any process was asked to stop. With several processes this is a collective: all of them
        must ask at the same steps."""
        if world == 1:
            return self.signum is not None
        flag = torch.tensor(int(self.signum is not None), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class CompiledStep:
    """train_step of `network`, torch.compile'd where `compile` asks. torch.compile compiles at the first call,
    and where it cannot (no C++ compiler, as on many Windows machines; an operator it does not support) the run
    goes on without it, with a warning: the failed call updated nothing (gradients are cleared first, the update
    comes last)."""

    def __init__(self, network, compile, report):
        self.eager, self.report = network, report
        self.network = torch.compile(network) if compile else network

    def __call__(self, optimizer, *args):
        try:
            return train_step(self.network, optimizer, *args)
        except Exception as e:  # torch's compiler errors share no base class
            if self.network is self.eager:
                raise
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            self.report.warning(f"torch.compile failed ({type(e).__name__}: {reason}); training without it. Set "
                                f"{field('compile', False)} to skip the attempt.")
            self.network = self.eager
            return train_step(self.network, optimizer, *args)


def check_finite(totals, epoch, on_nan, modeldir):
    """The number of this epoch's steps skipped for a non-finite loss so far (reading it waits for the device);
    with on_nan 'stop' any is a TrainingDiverged that names the last good checkpoint."""
    skipped = int(totals.skipped)
    if skipped and on_nan == "stop":
        last = list_checkpoints(modeldir)
        raise TrainingDiverged(
            f"the loss was not finite at epoch {epoch + 1}, step {int(totals.first_skipped) + 1}: training "
            f"stopped (that step was not taken). The last good checkpoint is "
            f"{last[-1] if last else 'none (none was written yet)'}. Lower {field('learning_rate')}, or pass "
            f"{field('on_nan', 'skip')} to skip such batches.")
    return skipped


def validate(model, x_valid, y_valid, loader, config, dtype):
    """The metrics row's validation columns: the loss and accuracy of `model` on the validation split, normalised
    as the training images are (and its top-5 accuracy where the data set has 100 classes); NaN without one."""
    if not len(x_valid):
        return {"valid_loss": float("nan"), "valid_acc": float("nan")}
    result = evaluate(model, x_valid, y_valid, (loader.mean, loader.std), device=loader.device, dtype=dtype,
                      tta=config.tta)
    top5 = {"valid_top5": result["top5_accuracy"]} if reports_top5(config.num_classes) else {}
    return {"valid_loss": result["loss"], "valid_acc": result["accuracy"], **top5}


def _start_processes(device):
    """(rank, world size, device). Under torchrun: the process group on the backend that serves the device
    (NCCL for CUDA tensors, gloo for CPU ones), each process bound to its own GPU."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), world, device


def train(config, report=None, continue_same_run=False, base_dir="."):
    """Train a ResNet as `config` says -> (model, metrics rows); the model is the weights' moving average where
    config.ema_decay asks for one. What happens is reported to `report` (a hw2.events.Reporter; None: nothing is
    shown) on the main process, which keeps what it shows in modeldir/log.txt, the config as given in config.json
    and what was decided for it (device, dtype, resumed or not, the paths) in resolved.json (hw2.modeldir), and
    with config.tensorboard TensorBoard's event files in modeldir/tensorboard/ (hw2.tensorboard).

    base_dir: the folder that relative data_dir and modeldir start from (a notebook's: its project).
    continue_same_run (the notebooks, whose Run All must be safe to repeat; one process): a modeldir that holds
    a run of the same parameters is continued as resume would, and a finished one returned at once."""
    report = report or Reporter()
    if config.tensorboard:
        require_tensorboard()  # without the package: refused before anything is read or written
    device = resolve_device(config.device)  # first: the device decides the process group's backend
    rank, world, device = _start_processes(device)
    modeldir, data_dir = Path(base_dir) / config.checkpoint_dir, Path(base_dir) / config.data_dir
    try:
        if config.batch_size % world:
            raise ConfigError(f"batch_size {config.batch_size} must divide evenly over {world} processes")
        if rank > 0:  # the main process decides, writes the files and reports
            return _train(config, modeldir, data_dir, config.resume, rank, world, device, Reporter())
        with claim(modeldir, config, continue_same_run) as resume, open_log(modeldir, "train") as log:
            with _reporter(report, config, modeldir) as report, report.logging_to(log):
                if resume and not config.resume:
                    report.continuing(modeldir)
                return _train(config, modeldir, data_dir, resume, rank, world, device, report)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _reporter(report, config, modeldir):
    """What the main process reports to (a context manager): `report`, or with config.tensorboard a reporter that
    passes every event on to it and writes TensorBoard's event files in modeldir/tensorboard/."""
    if not config.tensorboard:
        return contextlib.nullcontext(report)
    return TensorBoardReport(report, Path(modeldir) / TENSORBOARD, CHECK_EVERY)


def _train(config, modeldir, data_dir, resume, rank, world, device, report):
    """The run on process `rank` of `world` (0: the main one, which alone validates, writes files and reports), from
    its start or, when `resume`, from the newest checkpoint in modeldir. Each epoch trains its steps, then checks
    that the losses were finite, validates, writes metrics.csv, saves the checkpoints that are due and reports the
    epoch; a stop request ends the run with a mid-epoch checkpoint and Interrupted."""
    main, dtype = rank == 0, resolve_dtype(config.dtype, device)
    use_fastest_kernels(device)
    loader, (x_valid, y_valid) = _load_data(config, data_dir, rank, world, device)
    state = TrainingState(config, device, dtype)
    if resume:
        _resume(state, loader, modeldir, config, report)
    network = state.model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        state.model, device_ids=[device] if device.type == "cuda" else None)
    step = CompiledStep(network, config.compile, report)
    if main:
        write_config(modeldir, config, {"device": str(device), "dtype": dtype_name(dtype), "resume": resume,
                                        "modeldir": str(modeldir.resolve()), "data_dir": str(data_dir.resolve()),
                                        "processes": world})
        write_metrics(modeldir, state.metrics)  # a resumed run's rows newer than its checkpoint are dropped
        report.started(config, state.model, device, dtype)
        late = [m for m in config.lr_milestones if m >= config.epochs]
        if late and config.lr_schedule == "step":
            report.warning(f"lr_milestones {late} are not below epochs ({config.epochs}), so they never take "
                           f"effect; set {field('lr_milestones')} to change that")
        if state.epoch == config.epochs:
            report.nothing_to_train(modeldir, config.epochs)
    with _StopRequests(report) as stop:
        for epoch in range(state.epoch, config.epochs):
            totals = EpochTotals(device, state.partial)
            step.network.train()
            report.steps_begin(epoch, state.step, len(loader))
            try:
                for i, images, labels in loader.batches(epoch, state.step, get_image_size(epoch, config)):
                    for group in state.optimizer.param_groups:
                        group["lr"] = get_lr(epoch + i / len(loader), config)
                    loss, logits, finite = step(state.optimizer, images, labels, device, dtype,
                                                config.label_smoothing, state.scaler)
                    if state.average:
                        state.average.update(epoch * len(loader) + i)
                    totals.add(i, loss, logits, labels, finite)
                    report.step(loss)
                    # reading the device's flags waits for it: only now and then, and at an epoch's last step, so
                    # that processes whose epochs are shorter than CHECK_EVERY steps still agree to stop
                    look = (i + 1) % CHECK_EVERY == 0 or i + 1 == len(loader)
                    if look and config.on_nan == "stop":
                        check_finite(totals, epoch, config.on_nan, modeldir)
                    if (look or world == 1) and stop.requested(world, device):
                        state.epoch, state.step, state.partial = epoch, i + 1, totals.partial()
                        path = save_checkpoint(modeldir, _checkpoint(state, config, loader)) if main else None
                        raise Interrupted(stop.signum or signal.SIGTERM, path)
            finally:
                report.steps_end()
            skipped = check_finite(totals, epoch, config.on_nan, modeldir)
            train_loss, train_acc = totals.means(world)
            row = {"epoch": epoch + 1, "lr": state.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                   "train_acc": train_acc, **validate(state.evaluated, x_valid, y_valid, loader, config, dtype),
                   "seconds": totals.seconds()}  # the epoch's time, its validation included
            # the best of the whole run, resumed or not; never without a validation split (NaN is not more)
            best = row["valid_acc"] > max((m["valid_acc"] for m in state.metrics), default=-1.0)
            state.metrics.append(row)
            state.epoch, state.step, state.partial = epoch + 1, 0, None
            if main:
                write_metrics(modeldir, state.metrics)
                if skipped:
                    report.warning(f"skipped {skipped} batches of epoch {epoch + 1} whose loss was not finite")
                if (epoch + 1) % config.save_interval == 0 or epoch + 1 == config.epochs:
                    save_checkpoint(modeldir, _checkpoint(state, config, loader))
                if best:
                    save_best(modeldir, _checkpoint(state, config, loader))
                report.epoch_finished(row, state.metrics)
    if main:
        report.finished(state.metrics, modeldir)
    return state.evaluated, state.metrics


def _checkpoint(state, config, loader):
    """The Checkpoint of the state as it stands, with the config and the normalisation."""
    return Checkpoint(config=dataclasses.asdict(config), mean=loader.mean.flatten().tolist(),
                      std=loader.std.flatten().tolist(), **state.state_dict())


def _resume(state, loader, modeldir, config, report):
    """Load the newest readable checkpoint in modeldir into the state; a fresh start when there is none. The
    network goes on with the normalisation it was trained with (an imported one: its authors')."""
    path, checkpoint = latest_checkpoint(modeldir)
    if checkpoint is None:
        return
    check_architecture(checkpoint, config, path)
    state.load_state_dict(dataclasses.asdict(checkpoint))
    loader.mean, loader.std = channel_tensors(checkpoint.mean, checkpoint.std, loader.device)
    report.resumed(path, checkpoint.epoch, checkpoint.step)


def _load_data(config, data_dir, rank, world, device):
    """-> (the training Loader of this process, (x_valid, y_valid)), the split and any subset as config says; the
    validation split is the main process's alone (empty on the others, which do not validate)."""
    if rank == 0:
        download(data_dir, dataset=config.dataset)
    if world > 1:
        dist.barrier()  # the other processes read what rank 0 downloaded
    x_train, y_train, _, _ = load_data(data_dir, config.dataset)
    x_train, y_train, x_valid, y_valid = train_valid_split(x_train, y_train, config.valid_size, config.seed)
    if config.train_subset:
        x_train, y_train = x_train[:config.train_subset], y_train[:config.train_subset]
    if rank > 0:
        x_valid, y_valid = x_valid[:0], y_valid[:0]
    loader = Loader(x_train, y_train, config.batch_size // world, channel_stats(x_train), device, training=True,
                    seed=config.seed, shard=(rank, world), cutout=config.cutout, flip=config.flip)
    if len(loader) == 0:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {len(x_train)} training images; "
                          f"lower {field('batch_size')} or raise {field('train_subset')}")
    return loader, (x_valid, y_valid)

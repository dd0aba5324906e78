"""Training: a pure learning-rate schedule, one SGD step, and `train(config)`, which writes
modeldir/model-{epoch}.ckpt and modeldir/metrics.csv as it goes.

Runs survive interruption: every checkpoint is written atomically, `resume` continues from the newest one
exactly (batch order and augmentation are pure functions of seed, epoch and step), and SIGINT/SIGTERM stop
after the current step with a checkpoint. The step never waits for the device: whether a loss was finite is
decided on the device (the fused SGD kernel skips the update), and the host looks every CHECK_EVERY steps.

Training prints nothing: what happens goes to a hw2.events.Reporter, which each front end renders.
"""
import contextlib
import copy
import dataclasses
import itertools
import math
import os
import signal
import threading
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hw2.augment import SIZE, Loader, channel_stats, channel_tensors
from hw2.checkpoint import (ARCHITECTURE, NAME, Checkpoint, ModeldirLock, check_architecture, checkpoint_path,
                            latest_checkpoint, list_checkpoints)
from hw2.data import download, load_data, train_valid_split
from hw2.errors import ConfigError, Interrupted, ModeldirError, TrainingDiverged, field
from hw2.evaluate import evaluate
from hw2.events import Reporter
from hw2.models import ResNet
from hw2.runs import CONFIG, LOG, METRICS_FILE, log_output, write_config, write_metrics
from hw2.runtime import (autocast, fused_sgd_can_skip, grad_scaler, resolve_device, resolve_dtype, stop_signals,
                         sum_dtype, use_fastest_kernels)

CHECK_EVERY = 50  # steps between the host's looks at the device's non-finite count and at the stop flag across processes


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


# Config fields that say where and how a run computes, not what it learns: a run continued under other values of
# these is still the same run.
NOT_THE_RUN = ("data_dir", "modeldir", "save_interval", "resume", "on_nan", "device", "dtype", "compile")


def run_differences(saved, config):
    """{field: (saved value, config's value)} where a checkpoint's config (a dict) and `config` describe
    different runs; a field the saved config lacks (older runs) counts as its default."""
    saved = {**dataclasses.asdict(type(config)()), **saved}
    return {name: (saved[name], value) for name, value in dataclasses.asdict(config).items()
            if name not in NOT_THE_RUN and saved[name] != value}


def _may_continue(modeldir, config, continue_same_run):
    """Whether this run continues the one in modeldir: when config.resume, or with continue_same_run when the
    newest checkpoint is of the same parameters. Checkpoints it may not continue are a ModeldirError that names
    the parameters that differ and both ways out."""
    existing = list_checkpoints(modeldir)
    if not existing:
        return False  # nothing to continue: resume starts afresh
    if config.resume:
        return True
    _, checkpoint = latest_checkpoint(modeldir)
    differences = run_differences(checkpoint.config, config) if checkpoint else {}
    if continue_same_run and checkpoint and not differences:
        return True
    what = "checkpoints of a run with these parameters"
    if differences:
        what = "checkpoints of a run with other parameters (" + "; ".join(
            f"{name} {old!r} there, {new!r} here" for name, (old, new) in differences.items()) + ")"
    same_network = not set(differences) & set(ARCHITECTURE)
    resume = field("resume", True)
    if continue_same_run:  # a notebook's rerun, which continues a run of the same parameters by itself
        ways = ("Set those back to see or continue that run" + (f", set {resume} to continue it with these"
                                                               if same_network else "")
                + f", or choose a new {field('modeldir')} to start another")
    elif same_network:
        ways = f"Pass {resume} to continue that run" + (" with these values" if differences else "")
        ways += f"; to start another, choose a new {field('modeldir')}"
    else:
        ways = f"To continue that run, pass the values it has and {resume}; to start another, choose a new " \
               f"{field('modeldir')}"
    raise ModeldirError(f"{modeldir} holds {what}; newest {existing[-1].name}. {ways}. Nothing was overwritten.")


@contextlib.contextmanager
def _own_modeldir(config, continue_same_run=False):
    """The run's modeldir, locked against a second run -> whether to resume (_may_continue). Refused before
    any work if it cannot be written or holds checkpoints this run may not continue; removed again if this run
    created it and fails before its first checkpoint, so that a failed start leaves nothing behind."""
    modeldir = config.checkpoint_dir
    created = not modeldir.exists()
    try:
        modeldir.mkdir(parents=True, exist_ok=True)
        probe = modeldir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ModeldirError(f"modeldir {modeldir} is not writable ({e.strerror}); choose another "
                            f"{field('modeldir')}") from None
    try:
        with ModeldirLock(modeldir):
            yield _may_continue(modeldir, config, continue_same_run)
    except BaseException:
        if created and not list_checkpoints(modeldir):
            for name in (METRICS_FILE, CONFIG, LOG):
                (modeldir / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                modeldir.rmdir()
        raise


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


def train(config, report=None, continue_same_run=False):
    """Train a ResNet as `config` says -> (model, metrics rows); the model is the weights' moving average where
    config.ema_decay asks for one. What happens is reported to `report` (a
    hw2.events.Reporter; None: nothing is shown) on the main process; what the front end prints meanwhile is
    kept in modeldir/log.txt, the config in modeldir/config.json (hw2.runs).

    continue_same_run (the notebooks, whose Run All must be safe to repeat; one process): a modeldir that holds
    a run of the same parameters is continued as resume would, and a finished one returned at once."""
    report = report or Reporter()
    device = resolve_device(config.device)  # first: the device decides the process group's backend
    rank, world, device = _start_processes(device)
    try:
        if config.batch_size % world:
            raise ConfigError(f"batch_size {config.batch_size} must divide evenly over {world} processes")
        if rank > 0:
            return Run(config, rank, world, device, Reporter()).train()  # the main process reports
        with _own_modeldir(config, continue_same_run) as resume, log_output(config.checkpoint_dir, "train"):
            if resume and not config.resume:
                report.continuing(config.checkpoint_dir)
            return Run(dataclasses.replace(config, resume=resume), rank, world, device, report).train()
    finally:
        if world > 1:
            dist.destroy_process_group()


class Run:
    """One training run on one process: its config, device and dtype, the training Loader and validation
    images, the model, optimizer and loss scaler, the network the steps run, and the metrics rows so far. Only
    the main process (rank 0) writes files and validates; the others get a Reporter that shows nothing."""

    def __init__(self, config, rank, world, device, report):
        self.config, self.world, self.device, self.report = config, world, device, report
        self.main, self.modeldir = rank == 0, config.checkpoint_dir
        self.dtype = resolve_dtype(config.dtype, device)
        torch.manual_seed(config.seed)  # initialisation; batches and augmentation draw from their own generators
        use_fastest_kernels(device)
        self.loader, (self.x_valid, self.y_valid) = _load_data(config, rank, world, device)
        self.model = ResNet(config.resnet_version, config.resnet_size, config.num_classes, config.first_num_filters,
                            config.shortcut)
        self.model.to(device, memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, config.learning_rate, config.momentum, config.nesterov,
                                        config.weight_decay)
        self.scaler = grad_scaler(device, self.dtype)
        # `model` is the network itself (checkpointed, evaluated); `network` is what the steps run: the same
        # model, wrapped for data parallelism and compiled where asked (`eager`: the same, not compiled)
        self.network = self.eager = self.model
        if world > 1:
            self.network = self.eager = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device] if device.type == "cuda" else None)
        if config.compile:
            self.network = torch.compile(self.eager)
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.metrics = []

    def train(self):
        """Train the epochs not yet done -> (the network: its moving average where ema_decay asks for one,
        metrics rows)."""
        epoch, step, partial = self.resume() if self.config.resume else (0, 0, None)
        if self.main:
            self.start(epoch)
        with _StopRequests(self.report) as stop:
            for epoch in range(epoch, self.config.epochs):
                self.run_epoch(epoch, step, EpochTotals(self.device, partial), stop)
                step, partial = 0, None
        if self.main:
            self.report.finished(self.metrics, self.modeldir)
        return self.evaluated(), self.metrics

    def evaluated(self):
        """The network that validation, testing and the user get: the moving average where there is one."""
        return self.average.model if self.average else self.model

    def start(self, epoch):
        """Write config.json and metrics.csv as they stand (dropping rows newer than a resumed checkpoint), and
        report the start."""
        config, dtype_name = self.config, str(self.dtype).removeprefix("torch.")
        write_config(self.modeldir, {**dataclasses.asdict(config), "device": str(self.device), "dtype": dtype_name})
        write_metrics(self.modeldir, self.metrics)
        self.report.started(config, self.model, self.device, self.dtype)
        late = [m for m in config.lr_milestones if m >= config.epochs]
        if late and config.lr_schedule == "step":
            self.report.warning(f"lr_milestones {late} are not below epochs ({config.epochs}), so they never take "
                                f"effect; set {field('lr_milestones')} to change that")
        if epoch == config.epochs:
            self.report.nothing_to_train(self.modeldir, config.epochs)

    def run_epoch(self, epoch, start_step, totals, stop):
        """Train epoch `epoch` (0-based) from step start_step, validate, write metrics.csv and any checkpoint due,
        and report it; a stop request ends it with a mid-epoch checkpoint and Interrupted."""
        stopped_at = self.run_steps(epoch, start_step, totals, stop)
        if stopped_at is not None:
            path = self.save(epoch, stopped_at, totals.partial()) if self.main else None
            raise Interrupted(stop.signum or signal.SIGTERM, path)
        skipped = self.check_finite(totals, epoch)
        train_loss, train_acc = totals.means(self.world)
        row = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
               "train_acc": train_acc, "valid_loss": float("nan"), "valid_acc": float("nan")}
        if self.main and len(self.x_valid):
            result = evaluate(self.evaluated(), self.x_valid, self.y_valid, (self.loader.mean, self.loader.std),
                              device=self.device, dtype=self.dtype, tta=self.config.tta)
            row.update(valid_loss=result["loss"], valid_acc=result["accuracy"])
        row["seconds"] = totals.seconds()
        self.metrics.append(row)
        if not self.main:
            return
        write_metrics(self.modeldir, self.metrics)
        if skipped:
            self.report.warning(f"skipped {skipped} batches of epoch {epoch + 1} whose loss was not finite")
        if (epoch + 1) % self.config.save_interval == 0 or epoch + 1 == self.config.epochs:
            self.save(epoch + 1)
        self.report.epoch_finished(row, self.metrics)

    def run_steps(self, epoch, start_step, totals, stop):
        """The steps of epoch `epoch` from start_step, each added to totals -> None when the epoch ran to its
        end, or the number of steps done when a stop was requested."""
        config, loader, report = self.config, self.loader, self.report
        self.network.train()
        report.steps_begin(epoch, start_step, len(loader))
        try:
            for step, images, labels in loader.batches(epoch, start_step, get_image_size(epoch, config)):
                for group in self.optimizer.param_groups:
                    group["lr"] = get_lr(epoch + step / len(loader), config)
                loss, logits, finite = self.step(images, labels)
                if self.average:
                    self.average.update(epoch * len(loader) + step)
                totals.add(step, loss, logits, labels, finite)
                report.step()
                if config.on_nan == "stop" and (step + 1) % CHECK_EVERY == 0:
                    self.check_finite(totals, epoch)
                if (self.world == 1 or (step + 1) % CHECK_EVERY == 0) and stop.requested(self.world, self.device):
                    return step + 1
        finally:
            report.steps_end()
        return None

    def step(self, images, labels):
        """train_step of the network. torch.compile compiles at the first call, and where it cannot (no C++
        compiler, as on many Windows machines; an operator it does not support) the run goes on without it,
        with a warning: the failed call updated nothing (gradients are cleared first, the update comes last)."""
        args = (images, labels, self.device, self.dtype, self.config.label_smoothing, self.scaler)
        if self.network is self.eager:
            return train_step(self.network, self.optimizer, *args)
        try:
            return train_step(self.network, self.optimizer, *args)
        except Exception as e:  # torch's compiler errors share no base class
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            self.report.warning(f"torch.compile failed ({type(e).__name__}: {reason}); training without it. Set "
                                f"{field('compile', False)} to skip the attempt.")
            self.network = self.eager
            return train_step(self.network, self.optimizer, *args)

    def check_finite(self, totals, epoch):
        """The number of this epoch's steps skipped for a non-finite loss so far (reading it waits for the
        device); with on_nan 'stop' any is an error."""
        skipped = int(totals.skipped)
        if skipped and self.config.on_nan == "stop":
            last = list_checkpoints(self.modeldir)
            raise TrainingDiverged(
                f"the loss was not finite at epoch {epoch + 1}, step {int(totals.first_skipped) + 1}: training "
                f"stopped (that step was not taken). The last good checkpoint is "
                f"{last[-1] if last else 'none (none was written yet)'}. Lower {field('learning_rate')}, or pass "
                f"{field('on_nan', 'skip')} to skip such batches.")
        return skipped

    def save(self, epoch, step=0, partial=None):
        """model-{epoch}.ckpt after `epoch` whole epochs, or model-{epoch + 1}-step{step}.ckpt inside the next."""
        path = checkpoint_path(self.modeldir, epoch + 1 if step else epoch, step)
        Checkpoint(model=self.model.state_dict(), config=dataclasses.asdict(self.config),
                   mean=self.loader.mean.flatten().tolist(), std=self.loader.std.flatten().tolist(),
                   epoch=epoch, step=step, optimizer=self.optimizer.state_dict(),
                   scaler=self.scaler.state_dict() if self.scaler else {}, metrics=self.metrics,
                   partial=partial or EpochTotals.NONE,
                   average=self.average.model.state_dict() if self.average else {}).save(path)
        if not step:  # a whole-epoch checkpoint supersedes the mid-epoch ones of this and earlier epochs
            for older in list_checkpoints(self.modeldir):
                older_epoch, older_step = NAME.match(older.name).groups()
                if older_step is not None and int(older_epoch) <= epoch:
                    older.unlink()
        return path

    def resume(self):
        """Load the newest readable checkpoint -> (epoch, step, partial totals); a fresh start when there is
        none."""
        path, checkpoint = latest_checkpoint(self.modeldir)
        if checkpoint is None:
            return 0, 0, None
        check_architecture(checkpoint, self.config, path)
        self.model.load_state_dict(checkpoint.model)
        if self.average:  # a checkpoint without an average (another run's, an imported network) starts one
            self.average.model.load_state_dict(checkpoint.average or checkpoint.model)
        if checkpoint.optimizer:  # an imported network has none: fine-tuning starts SGD afresh, as the flags say
            self.optimizer.load_state_dict(checkpoint.optimizer)
        # the network goes on with the normalisation it was trained with (an imported one: its authors')
        self.loader.mean, self.loader.std = channel_tensors(checkpoint.mean, checkpoint.std, self.loader.device)
        if self.scaler is not None and checkpoint.scaler:
            self.scaler.load_state_dict(checkpoint.scaler)
        self.report.resumed(path, checkpoint.epoch, checkpoint.step)
        self.metrics = checkpoint.metrics
        return checkpoint.epoch, checkpoint.step, checkpoint.partial


def _load_data(config, rank, world, device):
    """-> (the training Loader of this process, (x_valid, y_valid)), the split and any subset as config says."""
    if rank == 0:
        download(config.data_dir)
    if world > 1:
        dist.barrier()  # the other processes read what rank 0 downloaded
    x_train, y_train, _, _ = load_data(config.data_dir)
    x_train, y_train, x_valid, y_valid = train_valid_split(x_train, y_train, config.valid_size, config.seed)
    if config.train_subset:
        x_train, y_train = x_train[:config.train_subset], y_train[:config.train_subset]
    loader = Loader(x_train, y_train, config.batch_size // world, channel_stats(x_train), device, training=True,
                    seed=config.seed, shard=(rank, world), cutout=config.cutout, flip=config.flip)
    if len(loader) == 0:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {len(x_train)} training images; "
                          f"lower {field('batch_size')} or raise {field('train_subset')}")
    return loader, (x_valid, y_valid)

"""Training: a pure learning-rate schedule, one SGD step, and `train(config)`, which writes
modeldir/model-{epoch}.ckpt and modeldir/metrics.csv as it goes.

Runs survive interruption: every checkpoint is written atomically, `resume` continues from the newest one
exactly (batch order and augmentation are pure functions of seed, epoch and step), and SIGINT/SIGTERM stop
after the current step with a checkpoint. The step never waits for the device: whether a loss was finite is
decided on the device (the fused SGD kernel skips the update), and the host looks every CHECK_EVERY steps.
"""
import contextlib
import csv
import dataclasses
import math
import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from hw2.augment import SIZE, Loader, channel_stats, channel_tensors
from hw2.checkpoint import (ARCHITECTURE, NAME, ModeldirLock, check_architecture, checkpoint_path, latest_checkpoint,
                            list_checkpoints, save_checkpoint)
from hw2.data import download, load_data, train_valid_split
from hw2.errors import ConfigError, Interrupted, ModeldirError, TrainingDiverged
from hw2.evaluate import evaluate
from hw2.models import ResNet, count_parameters
from hw2.runs import CONFIG, LOG, METRICS_FILE, log_output, write_config
from hw2.runtime import (autocast, fused_sgd_can_skip, grad_scaler, resolve_device, resolve_dtype, stop_signals,
                         sum_dtype, use_fastest_kernels)

METRICS = ["epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "seconds"]
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


class _StopRequests:
    """The first stop signal (SIGINT, and SIGTERM on Unix or SIGBREAK on Windows: runtime.stop_signals) asks the
    loop to stop after the current step; a second one stops at once."""

    def __init__(self):
        self.signum, self.previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for s in stop_signals():
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (again to stop at once)", flush=True)

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


class MetricsFile:
    """modeldir/metrics.csv, rewritten whole (atomically) after each epoch: it always holds exactly the
    epochs of the run so far, also after a resume from an older checkpoint."""

    def __init__(self, modeldir):
        self.path = modeldir / METRICS_FILE

    def write(self, rows):
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, METRICS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)


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
    differences = run_differences(checkpoint["config"], config) if checkpoint else {}
    if continue_same_run and checkpoint and not differences:
        return True
    what = "checkpoints of a run with these parameters"
    if differences:
        what = "checkpoints of a run with other parameters (" + "; ".join(
            f"{name} {old!r} there, {new!r} here" for name, (old, new) in differences.items()) + ")"
    same_network = not set(differences) & set(ARCHITECTURE)
    if continue_same_run:  # a notebook
        ways = ("Set those back to see or continue that run" + (", set resume = True to continue it with these"
                                                               if same_network else "")
                + ", or choose a new modeldir to start another")
    elif same_network:
        ways = "Pass --resume to continue that run" + (" with these values" if differences else "")
    else:
        ways = "To continue that run, pass the values it has and --resume"
    if not continue_same_run:
        ways += "; to start another, choose a new --modeldir"
    raise ModeldirError(f"{modeldir} holds {what}; newest {existing[-1].name}. {ways}. Nothing was overwritten.")


@contextlib.contextmanager
def _own_modeldir(config, continue_same_run=False):
    """The run's modeldir, locked against a second run -> (modeldir, whether to resume: _may_continue).
    Refused before any work if it cannot be written or holds checkpoints this run may not continue; removed
    again if this run created it and fails before its first checkpoint, so that a failed start leaves nothing
    behind."""
    modeldir = config.checkpoint_dir
    created = not modeldir.exists()
    try:
        modeldir.mkdir(parents=True, exist_ok=True)
        probe = modeldir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ModeldirError(f"modeldir {modeldir} is not writable ({e.strerror}); choose another --modeldir "
                            "(modeldir = ... in a notebook)") from None
    try:
        with ModeldirLock(modeldir):
            yield modeldir, _may_continue(modeldir, config, continue_same_run)
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


def train(config, on_epoch=None, continue_same_run=False):
    """Train a ResNet as `config` says -> (model, metrics rows). `on_epoch(metrics)` is called on the main
    process after each epoch (metrics.csv and any checkpoint written), e.g. to redraw a plot. What the run
    prints is kept in modeldir/log.txt, its config in modeldir/config.json (hw2.runs).

    continue_same_run (the notebooks, whose Run All must be safe to repeat; one process): a modeldir that holds
    a run of the same parameters is continued as resume would, and a finished one returned at once."""
    device = resolve_device(config.device)  # first: the device decides the process group's backend
    rank, world, device = _start_processes(device)
    try:
        if config.batch_size % world:
            raise ConfigError(f"batch_size {config.batch_size} must divide evenly over {world} processes")
        if rank > 0:
            return _train(config, rank, world, device, config.checkpoint_dir, on_epoch)
        with _own_modeldir(config, continue_same_run) as (modeldir, resume), log_output(modeldir, "train"):
            if resume and not config.resume:
                print(f"{modeldir} holds a run of these same parameters: continuing it, as resume = True would "
                      "(a new modeldir trains another).", flush=True)
            return _train(dataclasses.replace(config, resume=resume), rank, world, device, modeldir, on_epoch)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _train(config, rank, world, device, modeldir, on_epoch):
    main = rank == 0
    dtype = resolve_dtype(config.dtype, device)
    torch.manual_seed(config.seed)  # initialisation; batches and augmentation draw from their own generators
    use_fastest_kernels(device)
    loader, (x_valid, y_valid) = _load_data(config, rank, world, device)
    model = ResNet(config.resnet_version, config.resnet_size, config.num_classes, config.first_num_filters,
                   config.shortcut)
    model.to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config.learning_rate, config.momentum, config.nesterov, config.weight_decay)
    scaler = grad_scaler(device, dtype)
    checkpoints = Checkpoints(modeldir, config, model, optimizer, scaler, loader)
    start_epoch, start_step, metrics, partial = checkpoints.resume(verbose=main) if config.resume else (0, 0, [], None)
    metrics_file = MetricsFile(modeldir)
    if main:
        dtype_name = str(dtype).removeprefix("torch.")
        write_config(modeldir, {**dataclasses.asdict(config), "device": str(device), "dtype": dtype_name})
        print(f"ResNet-{model.depth} (version {config.resnet_version}, {count_parameters(model):,} parameters) "
              f"on {device} in {dtype_name}", flush=True)
        metrics_file.write(metrics)  # drops rows newer than the checkpoint
        _warn_about_late_milestones(config)
        if start_epoch == config.epochs:
            print(f"{modeldir} has finished all {config.epochs} epochs; nothing to train.", flush=True)

    # `model` is the network itself (checkpointed, evaluated); `network` is what the steps run: the same
    # model, wrapped for data parallelism and compiled where asked
    network = model
    if world > 1:
        network = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if config.compile:
        network = torch.compile(network)

    with _StopRequests() as stop:
        for epoch in range(start_epoch, config.epochs):
            totals = EpochTotals(device, partial)
            stopped_at = run_epoch(network, optimizer, scaler, loader, epoch, start_step, totals, config, dtype, stop,
                                   modeldir, progress=main)
            if stopped_at is not None:
                path = checkpoints.save(metrics, epoch, stopped_at, totals.partial()) if main else None
                raise Interrupted(stop.signum or signal.SIGTERM, path)
            skipped = _check_finite(totals, config, epoch, modeldir)
            start_step, partial = 0, None
            row = _epoch_row(epoch, optimizer, totals, world)
            if main and len(x_valid):
                result = evaluate(model, x_valid, y_valid, loader.mean, loader.std, device=device, dtype=dtype,
                                  tta=config.tta)
                row.update(valid_loss=result["loss"], valid_acc=result["accuracy"])
            row["seconds"] = totals.seconds()
            metrics.append(row)
            if main:
                metrics_file.write(metrics)
                if skipped:
                    print(f"warning: skipped {skipped} batches of epoch {epoch + 1} whose loss was not finite", flush=True)
                print(_epoch_line(row), flush=True)
                if (epoch + 1) % config.save_interval == 0 or epoch + 1 == config.epochs:
                    checkpoints.save(metrics, epoch + 1)
                if on_epoch:
                    on_epoch(metrics)
    if main:
        print(summary(metrics, modeldir), flush=True)
    return model, metrics


def run_epoch(network, optimizer, scaler, loader, epoch, start_step, totals, config, dtype, stop, modeldir,
              progress=True):
    """Train epoch `epoch` (0-based) from step start_step, adding each step to totals -> None when the epoch
    ran to its end, or the number of steps done when a stop was requested."""
    network.train()
    world, device = loader.world_size, loader.device
    batches = loader.batches(epoch, start_step, get_image_size(epoch, config))
    for step, images, labels in progress_bar(batches, total=len(loader), initial=start_step, disable=not progress,
                                             desc=f"Epoch {epoch + 1}/{config.epochs}", leave=False):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(epoch + step / len(loader), config)
        loss, logits, finite = train_step(network, optimizer, images, labels, device, dtype, config.label_smoothing,
                                          scaler)
        totals.add(step, loss, logits, labels, finite)
        if config.on_nan == "stop" and (step + 1) % CHECK_EVERY == 0:
            _check_finite(totals, config, epoch, modeldir)
        if (world == 1 or (step + 1) % CHECK_EVERY == 0) and stop.requested(world, device):
            return step + 1
    return None


def progress_bar(iterable, **kwargs):
    """A tqdm bar that fits the place: a widget in a notebook a person is watching, plain text on stdout in a
    notebook that papermill (nbclient) runs, whose saved output could only keep a widget's placeholder, and
    plain text on stderr on the command line. The two kinds of notebook are told apart by whether the
    frontend can answer input(): JupyterLab can, nbclient says it cannot (ipykernel's `_allow_stdin`)."""
    ipython = sys.modules.get("IPython")
    kernel = getattr(ipython.get_ipython(), "kernel", None) if ipython else None
    if kernel is None:
        return tqdm(iterable, **kwargs)
    if getattr(kernel, "_allow_stdin", False):
        from tqdm.notebook import tqdm as widget_bar  # needs ipywidgets, which only notebooks need
        return widget_bar(iterable, **kwargs)
    return tqdm(iterable, file=sys.stdout, **kwargs)


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
    mean, std = channel_stats(x_train)
    loader = Loader(x_train, y_train, config.batch_size // world, mean, std, device, training=True,
                    seed=config.seed, rank=rank, world_size=world)
    if len(loader) == 0:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {len(x_train)} training images; "
                          "lower --batch_size (batch_size in a notebook) or raise --train_subset")
    return loader, (x_valid, y_valid)


class Checkpoints:
    """Writing and reading the run's checkpoints: model, optimizer (and loss scaler), position in the run,
    config, metrics so far, the normalisation statistics, and a mid-epoch checkpoint's running totals."""

    def __init__(self, modeldir, config, model, optimizer, scaler, loader):
        self.modeldir, self.config, self.model, self.optimizer, self.scaler = modeldir, config, model, optimizer, scaler
        self.loader = loader

    def save(self, metrics, epoch, step=0, partial=None):
        """model-{epoch}.ckpt after `epoch` whole epochs, or model-{epoch + 1}-step{step}.ckpt inside the next."""
        path = checkpoint_path(self.modeldir, epoch + 1 if step else epoch, step)
        save_checkpoint({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                         "epoch": epoch, "step": step, "config": dataclasses.asdict(self.config), "metrics": metrics,
                         "partial": partial or EpochTotals.NONE, "mean": self.loader.mean.flatten().tolist(),
                         "std": self.loader.std.flatten().tolist(),
                         "scaler": self.scaler.state_dict() if self.scaler else {}}, path)
        if not step:  # a whole-epoch checkpoint supersedes the mid-epoch ones of this and earlier epochs
            for older in list_checkpoints(self.modeldir):
                older_epoch, older_step = NAME.match(older.name).groups()
                if older_step is not None and int(older_epoch) <= epoch:
                    older.unlink()
        return path

    def resume(self, verbose):
        """Load the newest readable checkpoint -> (epoch, step, metrics, partial totals); a fresh start when
        there is none."""
        path, checkpoint = latest_checkpoint(self.modeldir)
        if checkpoint is None:
            return 0, 0, [], None
        check_architecture(checkpoint, self.config, path)
        self.model.load_state_dict(checkpoint["model"])
        if checkpoint["optimizer"]:  # an imported network has none: fine-tuning starts SGD afresh, as the flags say
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        # the network goes on with the normalisation it was trained with (an imported one: its authors')
        self.loader.mean, self.loader.std = channel_tensors(checkpoint["mean"], checkpoint["std"], self.loader.device)
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        if verbose:
            print(f"Resuming from {path} (epoch {checkpoint['epoch']}, step {checkpoint['step']})", flush=True)
        return checkpoint["epoch"], checkpoint["step"], checkpoint["metrics"], checkpoint["partial"]


def _warn_about_late_milestones(config):
    late = [m for m in config.lr_milestones if m >= config.epochs]
    if late and config.lr_schedule == "step":
        print(f"warning: lr_milestones {late} are not below epochs ({config.epochs}), so they never take effect; "
              "set --lr_milestones (lr_milestones in a notebook) to change that", flush=True)


def _check_finite(totals, config, epoch, modeldir):
    """The number of this epoch's steps skipped for a non-finite loss so far (reading it waits for the device);
    with on_nan 'stop' any is an error."""
    skipped = int(totals.skipped)
    if skipped and config.on_nan == "stop":
        last = list_checkpoints(modeldir)
        raise TrainingDiverged(
            f"the loss was not finite at epoch {epoch + 1}, step {int(totals.first_skipped) + 1}: training stopped "
            f"(that step was not taken). The last good checkpoint is {last[-1] if last else 'none (none was written yet)'}. "
            "Lower --learning_rate (learning_rate in a notebook), or pass --on_nan skip (on_nan = 'skip') to skip such batches.")
    return skipped


def _epoch_row(epoch, optimizer, totals, world):
    train_loss, train_acc = totals.means(world)
    return {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss,
            "train_acc": train_acc, "valid_loss": float("nan"), "valid_acc": float("nan")}


def _epoch_line(row):
    """The assignment's line, `Epoch 36 Loss 0.2091 Duration 48.022 seconds.`, with the validation accuracy."""
    line = f"Epoch {row['epoch']} Loss {row['train_loss']:.4f} Duration {row['seconds']:.3f} seconds."
    if not math.isnan(row["valid_acc"]):
        line += f" Validation accuracy {row['valid_acc']:.4f}"
    return line


def summary(metrics, modeldir):
    """One line on a finished run: epochs, time, best and last validation accuracy, where the checkpoints are."""
    seconds = sum(row["seconds"] for row in metrics)
    took = f"{seconds:.1f} seconds" if seconds < 60 else f"{seconds / 60:.1f} minutes"
    text = f"Trained {len(metrics)} epoch{'s' if len(metrics) != 1 else ''} in {took}"
    valid = [row for row in metrics if not math.isnan(row["valid_acc"])]
    if valid:
        best = max(valid, key=lambda row: row["valid_acc"])
        text += (f"; validation accuracy best {best['valid_acc']:.4f} (epoch {best['epoch']}), "
                 f"last {valid[-1]['valid_acc']:.4f}")
    newest = list_checkpoints(modeldir)[-1:]
    return text + f". Checkpoints in {modeldir}" + (f" (newest {newest[0].name})." if newest else ".")

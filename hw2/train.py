"""Training: one Config (the notebook's parameters and the CLI's flags), a pure learning-rate schedule,
and `train(config)`, which writes modeldir/model-{epoch}.ckpt and modeldir/metrics.csv as it goes.

The defaults are He et al.'s recipe: batch 128, SGD with momentum 0.9, learning rate 0.1 divided by 10
at epochs 91 and 136 of 182, weight decay 1e-4, 45k/5k train/validation split. Runs survive
interruption: every checkpoint is written atomically, `resume` continues from the newest one exactly
(batch order and augmentation are pure functions of seed, epoch and step), and SIGINT/SIGTERM stop after
the current step with a checkpoint.
"""
import csv
import dataclasses
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from hw2.augment import SIZE, Loader, channel_stats
from hw2.config import Config
from hw2.checkpoint import (ModeldirLock, check_architecture, checkpoint_path, latest_checkpoint,
                            list_checkpoints, save_checkpoint)
from hw2.data import download, load_data, train_valid_split
from hw2.evaluate import evaluate
from hw2.models import ResNet
from hw2.runtime import autocast, resolve_device, resolve_dtype

METRICS = ["epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "seconds"]


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


def train_step(network, optimizer, images, labels, device, dtype, label_smoothing=0.0):
    """One SGD step -> (loss, logits, stepped). A non-finite loss takes no step, on every process alike."""
    with autocast(device, dtype):
        logits = network(images)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    finite = torch.isfinite(loss)  # waits for the device: the price of never stepping on a NaN
    if dist.is_initialized():
        finite = finite.int()
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not finite:
        return loss, logits, False
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits, True


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, signum, path):
        self.signum, self.path = signum, path
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint written to {path}. "
                         "Run the same command with --resume to continue.")


class _StopRequests:
    """The first SIGINT/SIGTERM asks the loop to stop after the current step; a second one stops at once."""

    def __init__(self):
        self.signum, self.previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (again to stop at once)", flush=True)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _write_metrics(path, rows):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, METRICS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _prepare_modeldir(config, rank):
    """Refuse, before any work, a modeldir that cannot be written or that holds another run's checkpoints."""
    modeldir = config.checkpoint_dir
    if rank != 0:
        return modeldir
    try:
        modeldir.mkdir(parents=True, exist_ok=True)
        probe = modeldir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"modeldir {modeldir} is not writable ({e.strerror}); choose another --modeldir") from None
    existing = list_checkpoints(modeldir)
    if existing and not config.resume:
        raise FileExistsError(f"{modeldir} already holds checkpoints ({existing[-1].name} is the newest); pass --resume "
                              "to continue that run, or choose a new --modeldir. Nothing was overwritten.")
    return modeldir


def _distributed():
    """(rank, world_size), initialising the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(config):
    """Train a ResNet as `config` says -> (model, metrics rows). See the module docstring."""
    rank, world = _distributed()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must divide evenly over {world} processes")
    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    dtype = resolve_dtype(config.dtype, device)
    modeldir = _prepare_modeldir(config, rank)
    lock = ModeldirLock(modeldir) if rank == 0 else None
    if lock:
        lock.__enter__()
    try:
        return _train(config, rank, world, device, dtype, modeldir)
    finally:
        if lock:
            lock.__exit__()


def _train(config, rank, world, device, dtype, modeldir):
    main = rank == 0
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if main:
        download(config.data_dir)
    if world > 1:
        dist.barrier()
    x_train, y_train, _, _ = load_data(config.data_dir)
    x_train, y_train, x_valid, y_valid = train_valid_split(x_train, y_train, config.valid_size, config.seed)
    if config.train_subset:
        x_train, y_train = x_train[:config.train_subset], y_train[:config.train_subset]
    mean, std = channel_stats(x_train)
    per_process_batch = config.batch_size // world
    loader = Loader(x_train, y_train, per_process_batch, mean, std, device, training=True,
                    seed=config.seed, rank=rank, world_size=world)
    if len(loader) == 0:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(x_train)} training images")

    model = ResNet(config.resnet_version, config.resnet_size, config.num_classes, config.first_num_filters)
    model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    metrics, start_epoch, start_step, partial = [], 0, 0, {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    if config.resume:
        path, checkpoint = latest_checkpoint(modeldir)
        if checkpoint is not None:
            check_architecture(checkpoint, config, path)
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            start_epoch, start_step = checkpoint["epoch"], checkpoint["step"]
            metrics, partial = checkpoint["metrics"], checkpoint["partial"]
            _set_rng_state(checkpoint["rng"])
            if main:
                print(f"Resuming from {path} (epoch {start_epoch}, step {start_step})")
    if main:
        _write_metrics(modeldir / "metrics.csv", metrics)  # drops rows newer than the checkpoint

    network = model
    if world > 1:
        network = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        network = torch.compile(network)

    def state(epoch, step):
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                "config": dataclasses.asdict(config), "metrics": metrics, "partial": partial,
                "mean": mean.tolist(), "std": std.tolist(), "rng": _rng_state()}

    steps = len(loader)
    with _StopRequests() as stop:
        for epoch in range(start_epoch, config.epochs):
            network.train()
            started = time.perf_counter()
            batches = loader.batches(epoch, start_step, get_image_size(epoch, config))
            bar = tqdm(batches, total=steps, initial=start_step, disable=not main,
                       desc=f"Epoch {epoch + 1}/{config.epochs}", leave=False)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            skipped = 0
            for step, images, labels in bar:
                lr = get_lr(epoch + step / steps, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, logits, stepped = train_step(network, optimizer, images, labels, device, dtype, config.label_smoothing)
                if not stepped:
                    if config.on_nan == "stop":
                        last = list_checkpoints(modeldir)
                        raise FloatingPointError(
                            f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}: training stopped. The last good "
                            f"checkpoint is {last[-1] if last else 'none (none was written yet)'}; lower --learning_rate, "
                            "or pass --on_nan skip to skip such batches.")
                    skipped += 1
                    continue
                loss_sum += loss.detach() * len(labels)
                correct += (logits.argmax(1) == labels).sum()
                partial["seen"] += len(labels)
                if stop.signum is not None:
                    partial["loss"] += loss_sum.item()
                    partial["correct"] += correct.item()
                    partial["seconds"] += time.perf_counter() - started
                    path = None
                    if main:
                        path = checkpoint_path(modeldir, epoch + 1, step + 1)
                        save_checkpoint(state(epoch, step + 1), path)
                    raise Interrupted(stop.signum, path)
            bar.close()
            start_step = 0
            if skipped and main:
                print(f"warning: skipped {skipped} batches of epoch {epoch + 1} whose loss was not finite", flush=True)
            seen = max(partial["seen"] * world, 1)
            train_loss = _all_sum(partial["loss"] + loss_sum.item(), world) / seen
            train_loss = train_loss if partial["seen"] else float("nan")
            train_acc = _all_sum(partial["correct"] + correct.item(), world) / seen
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss, "train_acc": train_acc,
                   "valid_loss": float("nan"), "valid_acc": float("nan")}
            if main and len(x_valid):
                result = evaluate(model, x_valid, y_valid, mean, std, device=device, dtype=dtype, tta=config.tta)
                row.update(valid_loss=result["loss"], valid_acc=result["accuracy"])
            row["seconds"] = partial["seconds"] + time.perf_counter() - started
            partial = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            metrics.append(row)
            if main:
                with open(modeldir / "metrics.csv", "a", newline="") as f:
                    csv.DictWriter(f, METRICS).writerow(row)
                print(f"Epoch {epoch + 1} Loss {train_loss:.4f} Duration {row['seconds']:.3f} seconds.", flush=True)
                if (epoch + 1) % config.save_interval == 0 or epoch + 1 == config.epochs:
                    save_checkpoint(state(epoch + 1, 0), checkpoint_path(modeldir, epoch + 1))
    return model, metrics


def _all_sum(value, world):
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item()


def _rng_state():
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                      *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

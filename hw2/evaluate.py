"""Batched evaluation of a model or a checkpoint: accuracy, per-class accuracy, confusion matrix; and the classes
a checkpoint gives pictures (classify)."""
import copy
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from hw2.augment import Loader
from hw2.checkpoint import PRETRAINED, check_architecture
from hw2.data import class_names, reports_top5
from hw2.errors import CheckpointError, field
from hw2.events import Reporter
from hw2.images import read_images
from hw2.modeldir import BEST, checkpoint_path, list_checkpoints, read_checkpoint, record_test
from hw2.models import build_network
from hw2.runtime import autocast, resolve_device, resolve_dtype


def fold_batchnorm(model):
    """A copy of `model` in evaluation mode, in which every BatchNorm that directly follows a convolution is
    folded into that convolution's weights and bias: the same function with one memory pass fewer per
    layer (all of version 1's BatchNorms, two of three in a version 2 block). The model is left as it was.
    Folding traces the model with torch.fx, so it is done once per set of weights, not per batch."""
    folded = torch.fx.symbolic_trace(copy.deepcopy(model).eval())
    modules = dict(folded.named_modules())
    for node in list(folded.graph.nodes):
        source = node.args[0] if node.args else None
        if (node.op == "call_module" and isinstance(modules[node.target], nn.BatchNorm2d)
                and isinstance(source, torch.fx.Node) and source.op == "call_module"
                and isinstance(modules[source.target], nn.Conv2d) and len(source.users) == 1):
            parent, _, name = source.target.rpartition(".")
            setattr(modules[parent], name, fuse_conv_bn_eval(modules[source.target], modules[node.target]))
            node.replace_all_uses_with(source)
            folded.graph.erase_node(node)
    folded.delete_all_unused_submodules()
    folded.recompile()
    return folded.to(memory_format=torch.channels_last)


@torch.no_grad()
def predict(network, loader, dtype=torch.float32, tta=False):
    """Logits (float32, on the loader's device) of `network` as it is (fold_batchnorm's copy, or a model
    in evaluation mode) for every image in an evaluation Loader. With tta the logits of the image and its
    mirror image are averaged."""
    if network.training:
        raise ValueError("predict needs a network in evaluation mode: fold_batchnorm(model) or model.eval(); "
                         "in training mode BatchNorm would normalise with each batch's own statistics")
    outputs = []
    with autocast(loader.device, dtype):
        for _, images, _ in loader.batches():
            logits = network(images).float()
            if tta:
                logits = (logits + network(images.flip(3)).float()) / 2
            outputs.append(logits)
    return torch.cat(outputs)


def evaluation_batch_size(device):
    """Images per evaluation batch: 64 on a CPU, where the activations of larger batches spill out of the
    caches, 1,024 on a GPU."""
    return 64 if device.type == "cpu" else 1024


def logits_of(model, x, stats, device="auto", dtype="auto", tta=False, fold=True):
    """Logits [N, C] (float32, on `device`) of uint8 images x [N, 3072] as evaluation computes them: an
    evaluation Loader normalising with stats (the per-channel (mean, std) the network was trained with), the
    BatchNorms folded (fold_batchnorm's copy runs on `device`; fold False: `model` runs as it is, see evaluate),
    the dtype resolved as training resolves it, autocast, and with tta the mirror images' logits averaged in."""
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    loader = Loader(x, torch.zeros(len(x), dtype=torch.int64), evaluation_batch_size(device), stats, device)
    return predict(fold_batchnorm(model).to(device) if fold else model, loader, dtype, tta)


def evaluate(model, x, y, stats, device="auto", dtype="auto", tta=False, fold=True):
    """Evaluate on uint8 images x [N, 3072] with labels y [N] -> dict of
        loss                 mean cross-entropy (float)
        accuracy             fraction of the N images predicted right (float)
        per_class_accuracy   [C] float tensor: each true class's fraction predicted right (0 for an absent class)
        confusion            [C, C] int64 tensor of image counts (rows: true class, columns: predicted)
        top5_accuracy        fraction of the N images whose class is among the 5 most probable (float)
        predicted            [N] int64 tensor: the class predicted for each image of x, in x's order
        logits               [N, C] float32 tensor: the network's output for each image (logits_of)
    (all on the CPU); stats is the per-channel (mean, std) the network was trained with, batches are
    evaluation_batch_size(device) images. The model is left as it was, on its device and in its mode: the
    folded copy is what runs on `device`. fold False: `model` is already
    fold_batchnorm's copy (the benchmark folds once, outside its timed windows) or in evaluation mode, and runs
    as it is, so it must already be on `device`."""
    logits = logits_of(model, x, stats, device, dtype, tta, fold)
    labels = torch.as_tensor(y).to(logits.device)
    num_classes = logits.shape[1]
    predicted = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2)
    confusion = confusion.view(num_classes, num_classes).cpu()
    per_class = confusion.diag() / confusion.sum(1).clamp(min=1)
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (predicted == labels).float().mean().item(),
        "top5_accuracy": (logits.topk(min(5, num_classes), 1).indices == labels[:, None]).any(1).float().mean().item(),
        "per_class_accuracy": per_class,
        "confusion": confusion,
        "predicted": predicted.cpu(),
        "logits": logits.cpu(),
    }


def restore(path, device="auto"):
    """Rebuild the network a checkpoint was trained as and load its weights (their moving average, where the
    run kept one) -> (model, Checkpoint)."""
    device = resolve_device(device) if isinstance(device, str) else device
    checkpoint = read_checkpoint(path)
    model = build_network(checkpoint.config)
    model.load_state_dict(checkpoint.average or checkpoint.model)  # a run's moving average is what it tests
    model.to(device, memory_format=torch.channels_last)
    return model, checkpoint


def checkpoints_to_test(modeldir, checkpoints=(), pretrained=False):
    """modeldir/model-{epoch}.ckpt for each epoch in `checkpoints` (modeldir/model-best.ckpt for "best"), or
    the newest checkpoint when it is empty; a CheckpointError that lists the checkpoints there when one of them
    is missing. With `pretrained` (modeldir is the default one, not one the user named), a modeldir without
    checkpoints gives the bundled network, [PRETRAINED], when no epochs are asked for."""
    have = list_checkpoints(modeldir)
    if not checkpoints:
        if not have and pretrained:
            return [PRETRAINED]
        if not have:
            raise CheckpointError(f"no checkpoints in {modeldir}: train a run into it first, or point "
                                  f"{field('modeldir')} at a run")
        return have[-1:]
    paths = [Path(modeldir) / BEST if epoch == "best" else checkpoint_path(modeldir, epoch) for epoch in checkpoints]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        listed = ", ".join(p.name for p in have) or "none"
        raise CheckpointError(f"{modeldir} has no {', '.join(missing)}; it has {listed}. "
                              f"Choose epochs with {field('checkpoints')}")
    return paths


def checkpoint_tta(checkpoint, tta=None):
    """Whether to evaluate with flip test-time augmentation: `tta`, or when it is None as the checkpoint's run
    was tested (its config's tta)."""
    return checkpoint.config.get("tta", False) if tta is None else tta


def evaluate_checkpoints(paths, x, y, device="auto", dtype="auto", tta=None, architecture=None, report=None):
    """Restore and evaluate each checkpoint on (x, y) (the test set), reporting each to `report` (a
    hw2.events.Reporter: testing, tested) and keeping its accuracy in modeldir/test.csv (not for the bundled
    network: hw2's own folder is no run's) -> list of evaluate()
    results. tta None: as each checkpoint was trained (its config's tta). With an `architecture` (a Config, or
    a dict of some of the ARCHITECTURE fields and the dataset of x and y), a checkpoint of another network or
    data set is an error."""
    report = report or Reporter()
    results = []
    for path in paths:
        model, checkpoint = restore(path, device)
        if architecture:
            check_architecture(checkpoint, architecture, path)
        flip = checkpoint_tta(checkpoint, tta)
        report.testing(path, flip)
        result = evaluate(model, x, y, (checkpoint.mean, checkpoint.std), device=next(model.parameters()).device,
                          dtype=dtype, tta=flip)
        report.tested(path, result)
        top5 = result["top5_accuracy"] if reports_top5(checkpoint.config["num_classes"]) else None
        if Path(path).resolve() != PRETRAINED:
            record_test(path, flip, result["accuracy"], top5)  # for the table of runs (python -m hw2 runs)
        results.append(result)
    return results


class Guess(NamedTuple):
    """One of the classes classify gives a picture: its index (the label), its name and its probability."""
    index: int
    name: str
    probability: float


def classify(source, images, top=5, tta=None, device="auto", dtype="auto"):
    """The classes a checkpoint's network gives pictures -> one dict per picture, in order:
        logits  [C] float32 tensor (CPU): the network's output, as evaluate computes it (logits_of)
        top     the `top` most probable classes (at most C), most probable first, as Guess(index, name, probability)
    source is a checkpoint's path, or the (model, checkpoint) pair restore returns (the model then runs on its
    own device, and `device` is not used). images is a list of pictures (files, PIL images or arrays, which
    hw2.images brings to 32x32), or CIFAR's uint8 [N, 3072]. The network is evaluated as `evaluate` evaluates
    it: the checkpoint's normalisation, BatchNorm folded, dtype, and tta None: as its run was tested.
    Probabilities are the softmax of the logits; class names are those of the checkpoint's config's dataset."""
    model, checkpoint = restore(source, device) if isinstance(source, (str, os.PathLike)) else source
    dataset, num_classes = checkpoint.config.get("dataset", "cifar10"), checkpoint.config["num_classes"]
    names = class_names(dataset)
    if num_classes != len(names):
        raise CheckpointError(f"the checkpoint's network has num_classes {num_classes}, but its dataset {dataset!r} "
                              f"has {len(names)} classes, so its outputs have no names; train with {field('dataset')} "
                              f"and {field('num_classes')} that agree")
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[1:] == (3072,)):
        images = read_images(images)
    if len(images) == 0:
        return []
    logits = logits_of(model, images, (checkpoint.mean, checkpoint.std), next(model.parameters()).device, dtype,
                       checkpoint_tta(checkpoint, tta)).cpu()
    probabilities, indices = logits.softmax(1).topk(min(top, len(names)), dim=1)
    return [{"logits": row, "top": [Guess(i, names[i], p) for i, p in zip(index.tolist(), probability.tolist())]}
            for row, index, probability in zip(logits, indices, probabilities)]

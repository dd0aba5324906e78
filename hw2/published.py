"""Published CIFAR-10 ResNets as hw2 checkpoints, to check hw2's pipeline against someone else's network.

The layout is akamaster/pytorch_resnet_cifar10's (resnet20-12fca82f.th ... resnet1202-f3b1deed.th): a dict
whose "state_dict", saved from nn.DataParallel, names conv1, bn1, layer{1,2,3}.{i}.conv{1,2}/bn{1,2} and
linear, each prefixed with "module." (the same names saved unwrapped, compiled or from DistributedDataParallel
import too); He et al.'s version 1 networks with zero-padding shortcuts (option A), trained on images scaled to
[0, 1] and normalised with ImageNet's mean and std. `import_checkpoint` checks a file against that layout and
writes it as modeldir/model-0.ckpt: epoch 0 of a run, so `python -m hw2 test` evaluates it and
`python -m hw2 train --resume` fine-tunes it for as many epochs, at the learning rate and with the optimizer the
flags say.
"""
import dataclasses
import hashlib
import io
import pickle
import re
from pathlib import Path

import torch

from hw2.checkpoint import Checkpoint
from hw2.config import Config
from hw2.errors import CheckpointError, ModeldirError, field
from hw2.modeldir import ModeldirLock, checkpoint_path, list_checkpoints
from hw2.models import ResNet

LAYOUT = "akamaster/pytorch_resnet_cifar10"
# torchvision's ToTensor (pixel / 255), then Normalize with ImageNet's statistics: in hw2's pixel units (0-255)
MEAN = [255 * m for m in (0.485, 0.456, 0.406)]
STD = [255 * s for s in (0.229, 0.224, 0.225)]
# the start of each of hw2's names -> the published layout's (stack_layers.i. is layer{i+1}.)
PREFIXES = {"start_layer.0.": "conv1.", "start_layer.1.": "bn1.", "output_layer.fc.": "linear."}
SHOWN = 6  # names listed in an error, of those that do not fit
# the prefixes a network's names get when it is saved wrapped: "module." from nn.DataParallel and
# DistributedDataParallel, "_orig_mod." from torch.compile; a compiled DDP network has both, in either order
WRAPPED = re.compile(r"^(?:module\.|_orig_mod\.)+")


def published_name(name):
    """The published layout's name of hw2's weight `name` (of ResNet(1, n, shortcut="identity"))."""
    for hw2, published in PREFIXES.items():
        if name.startswith(hw2):
            return published + name.removeprefix(hw2)
    return re.sub(r"^stack_layers\.(\d+)\.", lambda m: f"layer{int(m[1]) + 1}.", name)


def import_checkpoint(file, modeldir, allow_unsafe_load=False):
    """Check the published checkpoint `file` against the layout and write it as modeldir/model-0.ckpt, with
    the normalisation it was trained with and where it came from (file name, sha256) -> (path, config).
    The file is opened with torch.load(weights_only=True), which cannot run code; one that needs more is
    refused unless allow_unsafe_load. A file of another layout is a CheckpointError naming what does not fit."""
    data = _read_bytes(file)
    state = _state_dict(_load(data, file, allow_unsafe_load), file)
    model = _network(state, file)
    width = model.start_layer[0].out_channels
    config = Config(resnet_size=model.resnet_size, first_num_filters=width, shortcut="identity", modeldir=str(modeldir))
    source = {"file": Path(file).name, "sha256": hashlib.sha256(data.getbuffer()).hexdigest(), "layout": LAYOUT}
    modeldir = Path(modeldir)
    try:
        modeldir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModeldirError(f"cannot create modeldir {modeldir} ({e.strerror}); "
                            f"choose another {field('modeldir')}") from None
    with ModeldirLock(modeldir):
        existing = list_checkpoints(modeldir)
        if existing:
            raise ModeldirError(f"{modeldir} already holds checkpoints ({existing[-1].name} is the newest); import "
                                f"into a new {field('modeldir')}. Nothing was overwritten.")
        path = checkpoint_path(modeldir, 0)
        # epoch 0 with no optimizer state: `train --resume` starts SGD afresh
        Checkpoint(model.state_dict(), dataclasses.asdict(config), MEAN, STD, source=source).save(path)
    return path, config


def _read_bytes(file):
    try:
        return io.BytesIO(Path(file).read_bytes())
    except OSError as e:
        raise CheckpointError(f"cannot read {file} ({e.strerror})") from None


def _load(data, file, allow_unsafe):
    """torch.load of the file's bytes; with allow_unsafe, unpickling anything where weights_only refuses."""
    damaged = f"{file} is damaged (truncated?) or not a PyTorch checkpoint"
    try:
        return torch.load(data, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needs = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if not needs:
            raise CheckpointError(f"{damaged} (UnpicklingError); download it again") from None
        if not allow_unsafe:
            raise CheckpointError(
                f"{file} holds Python objects that safe loading (torch.load with weights_only=True) refuses "
                f"({needs[1]}), and loading it otherwise can run any code it contains. If you trust where it came "
                f"from, pass {field('allow_unsafe_load', True)}; a damaged file can look like this too") from None
    except Exception as e:  # torch's own messages advise weights_only=False: wrong for a damaged file
        raise CheckpointError(f"{damaged} ({type(e).__name__}); download it again") from None
    data.seek(0)
    try:
        return torch.load(data, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{damaged} ({type(e).__name__}); download it again") from None


def _state_dict(checkpoint, file):
    """The checkpoint's state_dict, its names without the prefixes of wrappers the network was saved in (WRAPPED)."""
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict)):
        found = (f"a dict of {_listed(sorted(map(str, checkpoint)))}" if isinstance(checkpoint, dict)
                 else f"a {type(checkpoint).__name__}")
        raise CheckpointError(f"{file} is not in the layout of {LAYOUT}: that is a dict with a state_dict, "
                              f"this is {found}")
    state = checkpoint["state_dict"]
    odd = [str(name) for name, value in state.items() if not (isinstance(name, str) and torch.is_tensor(value))]
    if odd:
        raise CheckpointError(f"{file}'s state_dict holds more than named tensors: {_listed(odd)}")
    return {WRAPPED.sub("", name): value for name, value in state.items()}


def _network(state, file):
    """hw2's ResNet(1, n, shortcut="identity") with the published weights, n and the width read from the names
    and conv1's shape; a CheckpointError naming the weights that do not fit it."""
    conv1 = state.get("conv1.weight")
    blocks = {m[1] for name in state if (m := re.match(r"layer1\.(\d+)\.", name))}
    if conv1 is None or conv1.dim() != 4 or not blocks:
        raise CheckpointError(f"{file} is not a CIFAR-10 ResNet in the layout of {LAYOUT}: it has no 4-d "
                              f"conv1.weight or no layer1 blocks; its weights are {_listed(list(state))}")
    model = ResNet(1, len(blocks), first_num_filters=conv1.shape[0], shortcut="identity")
    own = model.state_dict()
    names = {name: published_name(name) for name in own}
    expected = set(names.values())
    # nn.BatchNorm2d's step counters, which older PyTorch did not save, are not needed to evaluate or train
    missing = [p for p in names.values() if p not in state and not p.endswith(".num_batches_tracked")]
    unexpected = [p for p in state if p not in expected]
    wrong = [f"{p} {list(state[p].shape)} (needs {list(own[name].shape)})" for name, p in names.items()
             if p in state and state[p].shape != own[name].shape]
    if missing or unexpected or wrong:
        problems = [f"{what}: {_listed(found)}" for what, found in
                    (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)) if found]
        raise CheckpointError(f"{file} does not fit ResNet-{model.depth} (version 1, resnet_size {len(blocks)}, "
                              f"first_num_filters {conv1.shape[0]}, zero-padding shortcuts) in the layout of "
                              f"{LAYOUT}; " + "; ".join(problems))
    model.load_state_dict({name: state.get(p, own[name]) for name, p in names.items()})
    return model


def _listed(names):
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more

"""hw2's networks for use outside hw2: a Classifier carries its normalisation and class names, so that it takes
images as they are, float RGB in [0, 1], [N, 3, 32, 32], and no caller can normalise them wrongly. torch.hub gives
one (hubconf.py), and `python -m hw2 export` writes a checkpoint's as an ONNX or TorchScript file, BatchNorm folded:

    python -m hw2 export --format onnx --output resnet20.onnx                        # the bundled ResNet-20
    python -m hw2 export --modeldir runs/smoke --format torchscript --output smoke.pt

An ONNX file runs with onnxruntime and numpy alone (docs/onnx_example.py); its metadata "classes" names the outputs.
A TorchScript file runs with torch alone (torch.jit.load(file)(images), its .classes); torch 2.13 marks TorchScript
deprecated in favour of torch.export, but still runs it. Neither does test-time augmentation: with a checkpoint tested
with flip TTA, average the logits of the images and of images.flip(3).
"""
import importlib
import io
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from hw2.augment import channel_tensors, normalize
from hw2.checkpoint import PRETRAINED
from hw2.config import Config
from hw2.data import DATASETS, class_names
from hw2.errors import ConfigError, Hw2Error, field
from hw2.evaluate import checkpoints_to_test, fold_batchnorm, restore
from hw2.models import build_network

# The per-channel mean and std of each data set's 50,000 official training images (as hw2.augment.channel_stats
# computes them from a run's training split), on hw2's 0-255 scale: the published figures, which an untrained
# network normalises with, so that it needs no data to be built.
TRAINING_STATS = {
    "cifar10": ([255 * m for m in (0.49139968, 0.48215827, 0.44653124)],
                [255 * s for s in (0.24703233, 0.24348505, 0.26158768)]),
    "cifar100": ([255 * m for m in (0.50707516, 0.48654887, 0.44091784)],
                 [255 * s for s in (0.26733429, 0.25643846, 0.27615047)]),
}
FORMATS = ("onnx", "torchscript")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # torch.onnx's exporter needs the first two; the check, the last


class ExportError(Hw2Error):
    """An export cannot be done: its packages are missing, or the file cannot be written."""


class Classifier(nn.Module):
    """A network with the normalisation it was trained with inside: float RGB images in [0, 1], [N, 3, 32, 32]
    -> logits [N, len(classes)]; `classes` names the outputs."""

    def __init__(self, network, mean, std, classes):
        super().__init__()
        self.network = network
        mean, std = channel_tensors(mean, std, "cpu")  # on hw2's 0-255 scale, as checkpoints keep them
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.classes = list(classes)

    def forward(self, images):
        return self.network(normalize(255 * images, self.mean, self.std))  # to the pixel scale of mean and std


def untrained(resnet_version=1, resnet_size=3, first_num_filters=16, num_classes=10):
    """The Classifier of an untrained (randomly initialised) ResNet as hw2 trains it (the shortcut of hw2's
    default Config), named and normalised for the data set of num_classes classes: 10, CIFAR-10; 100, CIFAR-100."""
    datasets = {len(spec.classes): name for name, spec in DATASETS.items()}
    if num_classes not in datasets:
        known = ", ".join(f"{n} ({name})" for n, name in datasets.items())
        raise ConfigError(f"{field('num_classes')} must be one of {known}, the data sets whose classes and "
                          f"statistics the model knows; got {num_classes!r}")
    config = Config(resnet_version=resnet_version, resnet_size=resnet_size, first_num_filters=first_num_filters,
                    dataset=datasets[num_classes])  # checks the values
    return Classifier(build_network(config), *TRAINING_STATS[config.dataset], class_names(config.dataset))


def trained(path):
    """The Classifier of the hw2 checkpoint at `path` (hw2.checkpoint.PRETRAINED: the bundled ResNet-20), on the
    CPU in evaluation mode; its network is the one the checkpoint was trained as, BatchNorm unfolded, so that it
    can be fine-tuned."""
    model, checkpoint = restore(path, "cpu")
    return Classifier(model, checkpoint.mean, checkpoint.std, class_names(checkpoint.config["dataset"])).eval()


def checkpoint_to_export(modeldir=None, checkpoint=None):
    """The checkpoint to export: modeldir's `checkpoint` (an epoch or "best"; None: its newest), or without a
    modeldir the bundled ResNet-20."""
    if modeldir is None:
        if checkpoint is not None:
            raise ConfigError(f"{field('checkpoint')} picks a checkpoint of {field('modeldir')}, which is not given "
                              f"(without it the bundled ResNet-20 is exported): give the run's {field('modeldir')}")
        return PRETRAINED
    [path] = checkpoints_to_test(modeldir, [] if checkpoint is None else [checkpoint])
    return path


def export(path, format, output):
    """Write the checkpoint at `path` as a stand-alone `format` file (FORMATS) at `output`: a Classifier whose
    BatchNorms are folded (hw2.evaluate.fold_batchnorm), any number of images a call. The file is loaded back
    and run on a few images -> (the Classifier that was exported, the largest difference of the file's logits
    from it)."""
    if format not in FORMATS:
        raise ConfigError(f"{field('format')} must be one of {', '.join(FORMATS)}; got {format!r}")
    if format == "onnx":
        _require(ONNX_PACKAGES)
    classifier = trained(path)
    classifier.network = fold_batchnorm(classifier.network)
    data = _onnx(classifier) if format == "onnx" else _torchscript(classifier)
    try:
        Path(output).write_bytes(data)
    except OSError as e:
        raise ExportError(f"cannot write {output} ({e.strerror or e}); choose another {field('output')}") from None
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = classifier(images)
    logits = _run_onnx(output, images) if format == "onnx" else torch.jit.load(output)(images)
    return classifier, (logits - expected).abs().max().item()


def _require(packages):
    missing = [name for name in packages if _missing(name)]
    if missing:
        raise ExportError(f"exporting to ONNX needs {', '.join(packages)}, and {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not installed: pip install {' '.join(packages)}")


def _missing(name):
    try:
        importlib.import_module(name)
    except ImportError:
        return True
    return False


def _onnx(classifier):
    """The ONNX file's bytes: torch.onnx's exporter (torch.export's graph, through onnxscript) with a dynamic batch
    axis; the class names in its metadata."""
    example = torch.rand(2, 3, 32, 32)
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    # the exporter warns of torchvision's operators, which no hw2 network uses, and of torch's own internals
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(classifier, (example,), dynamo=True, verbose=False, input_names=["images"],
                                        output_names=["logits"],
                                        dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
    finally:
        onnx_log.setLevel(level)
    program.model.metadata_props["classes"] = json.dumps(classifier.classes)
    return program.model_proto.SerializeToString()  # one file, the weights inside


def _run_onnx(output, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def _torchscript(classifier):
    """The TorchScript file's bytes; scripted, not traced, so that .classes stays an attribute of the file."""
    data = io.BytesIO()
    torch.jit.save(torch.jit.script(classifier), data)
    return data.getvalue()

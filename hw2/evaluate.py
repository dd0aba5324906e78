"""Batched evaluation of a model or a checkpoint: accuracy, per-class accuracy, confusion matrix."""
import torch
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse

from hw2.augment import Loader
from hw2.checkpoint import check_architecture, checkpoint_path, list_checkpoints, load_checkpoint
from hw2.models import ResNet
from hw2.runtime import autocast, resolve_device, resolve_dtype


def fold_batchnorm(model):
    """A copy of `model` for evaluation, in which every BatchNorm that directly follows a convolution is
    folded into that convolution's weights and bias: the same function with one memory pass fewer per
    layer (all of version 1's BatchNorms, two of three in a version 2 block; measured 1.25x on a 2-core CPU).
    The model is left as it was."""
    was_training = model.training
    folded = fuse(model.eval())  # traces a deep copy with torch.fx
    model.train(was_training)
    return folded.to(memory_format=torch.channels_last)


@torch.no_grad()
def predict(model, loader, dtype=torch.float32, tta=False):
    """Logits (float32, on the loader's device) for every image in an evaluation Loader. With tta the
    logits of the image and its mirror image are averaged."""
    network = fold_batchnorm(model)
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
    caches (2-core EPYC, BN folded: ResNet-20 1,644 img/s at 64 against 1,529 at 256; ResNet-29 version 2
    742 against 270), 1,024 on a GPU."""
    return 64 if device.type == "cpu" else 1024


def evaluate(model, x, y, mean, std, batch_size=None, device="auto", dtype="auto", tta=False):
    """Evaluate on uint8 images x [N, 3072] with labels y [N] -> dict with loss, accuracy,
    per_class_accuracy [C] and confusion [C, C] (rows: true class, columns: predicted). batch_size None:
    evaluation_batch_size(device)."""
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    batch_size = batch_size or evaluation_batch_size(device)
    model.to(device)
    loader = Loader(x, y, batch_size, mean, std, device, training=False)
    logits = predict(model, loader, dtype, tta)
    labels = loader.y
    num_classes = logits.shape[1]
    predicted = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2)
    confusion = confusion.view(num_classes, num_classes).cpu()
    per_class = confusion.diag() / confusion.sum(1).clamp(min=1)
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (predicted == labels).float().mean().item(),
        "per_class_accuracy": per_class,
        "confusion": confusion,
        "predicted": predicted.cpu(),
    }


def restore(path, device="auto"):
    """Rebuild the network a checkpoint was trained as and load its weights -> (model, checkpoint)."""
    device = resolve_device(device) if isinstance(device, str) else device
    checkpoint = load_checkpoint(path)
    c = checkpoint["config"]
    model = ResNet(c["resnet_version"], c["resnet_size"], c["num_classes"], c["first_num_filters"])
    model.load_state_dict(checkpoint["model"])
    model.to(device, memory_format=torch.channels_last)
    return model, checkpoint


def checkpoints_to_test(modeldir, epochs=()):
    """modeldir/model-{epoch}.ckpt for each of `epochs`, or the newest checkpoint when epochs is empty."""
    if epochs:
        return [checkpoint_path(modeldir, epoch) for epoch in epochs]
    newest = list_checkpoints(modeldir)[-1:]
    if not newest:
        raise FileNotFoundError(f"no checkpoints in {modeldir}: train first, or point modeldir at a run")
    return newest


def evaluate_checkpoints(paths, x, y, device="auto", dtype="auto", tta=False, config=None):
    """Restore and evaluate each checkpoint on (x, y), printing `Restored model parameters from ...` and
    `Test accuracy: ...` -> list of evaluate() results. With a config, a checkpoint of another network
    is an error."""
    results = []
    for path in paths:
        model, checkpoint = restore(path, device)
        if config is not None:
            check_architecture(checkpoint, config, path)
        print(f"Restored model parameters from {path}")
        result = evaluate(model, x, y, checkpoint["mean"], checkpoint["std"],
                          device=next(model.parameters()).device, dtype=dtype, tta=tta)
        print(f"Test accuracy: {result['accuracy']:.4f}")
        results.append(result)
    return results

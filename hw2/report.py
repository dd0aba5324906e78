"""What the notebooks show: text tables and figures (hw2.notebook is how a notebook runs: its parameters,
its paths, live output).

Figures are matplotlib `Figure` objects made without pyplot, so nothing is drawn or kept behind the
caller's back: a notebook shows one by leaving it as a cell's value, anyone can `fig.savefig(path)`.
"""
import csv
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from hw2.augment import PAD, SIZE, Loader, channel_stats, pad_crop_flip
from hw2.data import CLASSES, steps_per_epoch
from hw2.modeldir import METRICS
from hw2.models import SHORTCUTS, ResNet, count_parameters
from hw2.runs import format_table
from hw2.train import get_image_size, get_lr

ROOT = Path(__file__).resolve().parent.parent  # the repository hw2 is in (installed: the folder it is installed in)

# The CIFAR-10 networks He et al. report, by (resnet_version, resnet_size): name and published parameter
# count ("Deep Residual Learning", Table 6; "Identity Mappings", Table 3).
PAPER_NETWORKS = {
    (1, 3): ("ResNet-20", "0.27M"),
    (1, 5): ("ResNet-32", "0.46M"),
    (1, 7): ("ResNet-44", "0.66M"),
    (1, 9): ("ResNet-56", "0.85M"),
    (1, 18): ("ResNet-110", "1.7M"),
    (1, 200): ("ResNet-1202", "19.4M"),
    (2, 18): ("ResNet-164 (pre-activation)", "1.7M"),
}


# --- data ---------------------------------------------------------------------------------------------

def to_images(x):
    """uint8 [N, 3072] (R, G and B planes) -> [N, 32, 32, 3], the layout imshow takes."""
    return x.reshape(-1, 3, SIZE, SIZE).transpose(0, 2, 3, 1)


def class_count_table(splits, classes=CLASSES):
    """{split name: labels} -> table of the images per class in each split, with the totals."""
    counts = {name: np.bincount(y, minlength=len(classes)) for name, y in splits.items()}
    rows = [[name, *(counts[s][c] for s in splits)] for c, name in enumerate(classes)]
    rows.append(["total", *(counts[s].sum() for s in splits)])
    return format_table(["class", *splits], rows)


def _show(ax, image, title=None):
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def sample_grid(x, y, per_class=8, classes=CLASSES, seed=0, rows=10):
    """Figure: one row per class (the first `rows` classes: all ten of CIFAR-10's) of `per_class` images drawn at
    random from it."""
    rng = np.random.default_rng(seed)
    shown = classes[:rows]
    fig = Figure(figsize=(per_class, len(shown) * 1.05), layout="constrained")
    for c, row in enumerate(fig.subplots(len(shown), per_class, squeeze=False)):
        chosen = rng.choice(np.flatnonzero(y == c), per_class, replace=False)
        for ax, image in zip(row, to_images(x[chosen])):
            _show(ax, image)
        row[0].set_ylabel(classes[c], rotation=0, ha="right", va="center")
    return fig


def augmentation_steps(record, dy, dx):
    """One image [3072] through the training augmentation -> original, padded, cropped at (dy, dx) and
    cropped then flipped, each uint8 [H, W, 3]. The crop and flip are parse_record's own (pad_crop_flip)."""
    image = record.reshape(3, SIZE, SIZE)
    padded = np.pad(image, ((0, 0), (PAD, PAD), (PAD, PAD)))
    cropped, flipped = (pad_crop_flip(image, dy, dx, flip) for flip in (False, True))
    return [step.astype(np.uint8).transpose(1, 2, 0) for step in (image, padded, cropped, flipped)]


def augmentation_figure(x, count=4, seed=0):
    """Figure: `count` random images, each as original, padded by 4, randomly cropped, flipped."""
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(6, 1.6 * count), layout="constrained")
    for row, i in zip(fig.subplots(count, 4, squeeze=False), rng.choice(len(x), count, replace=False)):
        dy, dx = rng.integers(0, 2 * PAD + 1, size=2)
        titles = ["original", f"padded by {PAD}", f"cropped at ({dy}, {dx})", "flipped"]
        for ax, step, title in zip(row, augmentation_steps(x[i], dy, dx), titles):
            _show(ax, step, title)
    return fig


def augmentation_options_figure(x, cutout=8, flip="alternate", count=4, epochs=3, seed=0):
    """Figure: `count` images as the training Loader gives them in each of `epochs` epochs with these options
    (hw2.config's cutout and flip): the crop and flip drawn anew each epoch, the Cutout square set to the mean
    (normalised to 0; drawn back in pixels, so it shows as the mean colour), and with flip 'alternate' each image
    mirrored in every other epoch. The Loader itself draws them, so this is exactly what training sees."""
    chosen = np.random.default_rng(seed).choice(len(x), count, replace=False)
    mean, std = channel_stats(x)
    loader = Loader(x[chosen], np.arange(count), count, (mean, std), "cpu", training=True, seed=seed, cutout=cutout,
                    flip=flip)
    fig = Figure(figsize=(1.6 * epochs, 1.6 * count), layout="constrained")
    fig.suptitle(f"cutout {cutout}, flip '{flip}'")
    axes = fig.subplots(count, epochs, squeeze=False)
    for epoch in range(epochs):
        [(_, images, labels)] = loader.batches(epoch)
        pixels = (images * loader.std + loader.mean).round().clamp(0, 255).to(torch.uint8)  # back from normalised
        for image, i in zip(pixels, labels.tolist()):
            _show(axes[i, epoch], image.permute(1, 2, 0).numpy(), f"epoch {epoch + 1}")
    return fig


# --- architecture -------------------------------------------------------------------------------------

def parameter_table(first_num_filters=16):
    """Depth and parameter count of the networks He et al. report on CIFAR-10, with each shortcut (zero padding:
    version 1 only), beside the papers' counts."""
    rows = []
    for (version, size), (name, paper) in PAPER_NETWORKS.items():
        with torch.device("meta"):  # no memory for the weights (ResNet-1202 has 19.4M)
            models = {shortcut: ResNet(version, size, first_num_filters=first_num_filters, shortcut=shortcut)
                      for shortcut in SHORTCUTS if version == 1 or shortcut == "projection"}
        counts = [f"{count_parameters(models[shortcut]):,}" if shortcut in models else "-" for shortcut in SHORTCUTS]
        rows.append([name, version, size, models["projection"].depth, *counts, paper])
    return format_table(["network", "version", "n", "depth", *SHORTCUTS, "paper"], rows)


@torch.no_grad()
def stage_shapes(model):
    """[(stage, output shape)] of the start layer, each stack and the output layer for one 32x32 image."""
    stages = [("start layer", model.start_layer)]
    stages += [(f"stack {i + 1}", stack) for i, stack in enumerate(model.stack_layers)]
    stages += [("output layer", model.output_layer)]
    shapes = []
    hooks = [module.register_forward_hook(lambda m, inputs, out, name=name: shapes.append((name, tuple(out.shape))))
             for name, module in stages]
    was_training = model.training
    model.eval()  # leave the BatchNorm running statistics alone
    model(torch.zeros(1, 3, SIZE, SIZE))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return shapes


# --- training -----------------------------------------------------------------------------------------

def schedule(config):
    """(progress, learning rate) at each step of `config`'s run, progress in epochs (epoch e, step s of n: e + s
    / n), from hw2.train.get_lr, which the training loop calls before every step; and (epoch, training image
    side) for each epoch from hw2.train.get_image_size. Each list ends at the end of the run, for a staircase."""
    n = steps_per_epoch(config)
    progress = [step / n for step in range(config.epochs * n)]
    rates = [get_lr(p, config) for p in progress]
    sizes = [get_image_size(epoch, config) for epoch in range(config.epochs)]
    return (progress + [config.epochs], rates + rates[-1:]), (list(range(config.epochs + 1)), sizes + sizes[-1:])


def schedule_figure(configs, title=""):
    """Figure: for each of {name: Config}, a row with the learning rate at every step and the side of the
    training images in each epoch (progressive resizing; 32 throughout without it), against the epochs trained."""
    fig = Figure(figsize=(11, 2.3 * len(configs) + 0.4), layout="constrained")
    fig.suptitle(title)
    for (name, config), (rate, size) in zip(configs.items(), fig.subplots(len(configs), 2, squeeze=False)):
        (progress, rates), (epochs, sizes) = schedule(config)
        rate.plot(progress, rates, drawstyle="steps-post")
        size.plot(epochs, sizes, drawstyle="steps-post", color="tab:green")
        rate.set_title(f"{name}: learning rate at each step", fontsize=10)
        size.set_title(f"{name}: training images (pixels a side)", fontsize=10)
        rate.set_ylim(bottom=0)
        size.set_ylim(0, SIZE + 4)
        for ax in (rate, size):
            ax.set_xlabel("epochs trained")
            ax.grid(alpha=0.3)
    return fig


def smoothed_loss_floor(label_smoothing, num_classes=len(CLASSES)):
    """The lowest cross-entropy that training with label smoothing can reach: the entropy of its targets,
    1 - label_smoothing + label_smoothing / num_classes on the true class and label_smoothing / num_classes
    on each other one (0 without smoothing)."""
    other = label_smoothing / num_classes
    true = 1 - label_smoothing + other
    return sum(-p * math.log(p) for p in [true] + [other] * (num_classes - 1) if p > 0)


def training_curves(metrics, title=""):
    """Figure: loss, accuracy and learning rate against epoch, from metric rows (validation absent when
    valid_size was 0)."""
    fig = Figure(figsize=(12, 3.5), layout="constrained")
    fig.suptitle(title)
    loss, accuracy, lr = fig.subplots(1, 3)
    column = {name: [row[name] for row in metrics] for name in METRICS}
    epoch = column["epoch"]
    for ax, name in ((loss, "loss"), (accuracy, "acc")):
        ax.plot(epoch, column[f"train_{name}"], ".-", label="train")
        ax.plot(epoch, column[f"valid_{name}"], ".-", label="validation")
        ax.legend()
    lr.plot(epoch, column["lr"], ".-")
    for ax, title in ((loss, "cross-entropy loss"), (accuracy, "accuracy"), (lr, "learning rate at epoch end")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return fig


def metrics_table(metrics, epochs):
    """The metric rows of `epochs` (1-based) as a table: learning rate, training and validation loss and
    accuracy."""
    rows = [[int(row["epoch"]), f"{row['lr']:.4g}", f"{row['train_loss']:.3f}", f"{row['train_acc']:.4f}",
             f"{row['valid_loss']:.3f}", f"{row['valid_acc']:.4f}"] for row in metrics if row["epoch"] in epochs]
    return format_table(["epoch", "lr", "train loss", "train acc", "valid loss", "valid acc"], rows)


def compare_curves(runs, title=""):
    """Figure: several runs' curves overlaid, from {name: metric rows}: accuracy against epoch and against
    training time (solid: validation, dotted: training) and training loss against epoch."""
    fig = Figure(figsize=(13, 4), layout="constrained")
    fig.suptitle(title)
    by_epoch, by_time, loss = fig.subplots(1, 3)
    for name, metrics in runs.items():
        epoch = [row["epoch"] for row in metrics]
        hours = np.cumsum([row["seconds"] for row in metrics]) / 3600
        valid, train = ([row[column] for row in metrics] for column in ("valid_acc", "train_acc"))
        for ax, x in ((by_epoch, epoch), (by_time, hours)):
            (line,) = ax.plot(x, valid, "-", label=name)
            ax.plot(x, train, ":", color=line.get_color())
        loss.plot(epoch, [row["train_loss"] for row in metrics], "-", color=line.get_color(), label=name)
    for ax, what, unit in ((by_epoch, "accuracy (solid: validation, dotted: training)", "epoch"),
                           (by_time, "accuracy against training time", "hours"),
                           (loss, "training loss", "epoch")):
        ax.set_title(what)
        ax.set_xlabel(unit)
        ax.grid(alpha=0.3)
    loss.set_yscale("log")
    by_epoch.legend(fontsize=8)
    return fig


# --- evaluation ---------------------------------------------------------------------------------------

def title_path(path):
    """A path as a figure's title names it: from the repository's top folder where it lies in the repository
    (a notebook's kernel starts in notebooks/ and spells it ../runs/...), else as given."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def confused_pairs(confusion, classes=CLASSES, count=5):
    """The `count` largest off-diagonal cells of a confusion matrix as a table: true class, predicted class,
    images, and their share of the true class's images."""
    confusion = np.asarray(confusion)
    wrong = confusion * (1 - np.eye(len(confusion), dtype=confusion.dtype))
    order = np.argsort(wrong, axis=None, kind="stable")[::-1][:count]
    rows = [[classes[t], classes[p], int(wrong[t, p]), f"{wrong[t, p] / confusion[t].sum():.1%}"]
            for t, p in zip(*np.unravel_index(order, wrong.shape))]
    return format_table(["true", "predicted", "images", "of the true class"], rows, left=2)


def confusion_summary(confusion, classes=CLASSES):
    """Two lines on a confusion matrix: its largest count off the diagonal beside the same pair the other way
    round, and the classes predicted right least and most often."""
    confusion = np.asarray(confusion)
    wrong = confusion * (1 - np.eye(len(confusion), dtype=confusion.dtype))
    t, p = np.unravel_index(np.argmax(wrong), wrong.shape)
    accuracy = np.diag(confusion) / confusion.sum(axis=1)
    worst, best = np.argmin(accuracy), np.argmax(accuracy)
    return (f"most confused: {classes[t]} called {classes[p]} {wrong[t, p]} times, "
            f"{classes[p]} called {classes[t]} {wrong[p, t]} times\n"
            f"right least often: {classes[worst]} ({accuracy[worst]:.1%}); "
            f"most often: {classes[best]} ({accuracy[best]:.1%})")


def write_confusion(path, confusion, classes=CLASSES):
    """A confusion matrix as CSV: a header of the predicted classes, then a row per true class."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *classes[:len(confusion)]])
        writer.writerows([name, *map(int, row)] for name, row in zip(classes, np.asarray(confusion)))


def per_class_table(result, classes=CLASSES):
    """Test images, correct predictions and accuracy per class, from an evaluate() result."""
    confusion = result["confusion"]
    rows = [[name, int(confusion[c].sum()), int(confusion[c, c]), f"{result['per_class_accuracy'][c]:.4f}"]
            for c, name in enumerate(classes[:len(confusion)])]
    return format_table(["class", "images", "correct", "accuracy"], rows)


def confusion_figure(confusion, classes=CLASSES, title=""):
    """Figure: the confusion matrix (rows: true class, columns: predicted), counts written in up to 20 classes;
    CIFAR-100's 100 x 100 is drawn as shades alone, with its names small (confused_pairs names its largest
    counts)."""
    confusion = np.asarray(confusion)
    classes, written = classes[:len(confusion)], len(confusion) <= 20
    fig = Figure(figsize=(7, 6) if written else (12, 11), layout="constrained")
    fig.suptitle(title)
    ax = fig.subplots()
    shown = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(shown, ax=ax)
    for (i, j), count in np.ndenumerate(confusion if written else []):
        ax.text(j, i, count, ha="center", va="center", fontsize=7,
                color="white" if count > confusion.max() / 2 else "black")
    size = 10 if written else 5
    ax.set_xticks(range(len(classes)), classes, rotation=45 if written else 90, ha="right", fontsize=size)
    ax.set_yticks(range(len(classes)), classes, fontsize=size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return fig


def misclassified_figure(x, y, predicted, classes=CLASSES, count=24, columns=8, title=""):
    """Figure: the first `count` misclassified images, titled with true and predicted class."""
    y, predicted = np.asarray(y), np.asarray(predicted)
    wrong = np.flatnonzero(predicted != y)[:count]
    rows = max(1, -(-len(wrong) // columns))
    fig = Figure(figsize=(columns * 1.2, rows * 1.5), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, i in zip(axes, wrong):
        _show(ax, to_images(x[i:i + 1])[0], f"true {classes[y[i]]}\npred {classes[predicted[i]]}")
        ax.set_axis_on()
    return fig


def picture_figure(picture, guesses, title=""):
    """Figure: a picture as the network sees it (uint8 [3072], hw2.images.read_image's 32x32) beside its most
    probable classes as bars (hw2.evaluate.classify's Guess list, most probable first)."""
    fig = Figure(figsize=(8, 2.6), layout="constrained")
    fig.suptitle(title)
    image_ax, bars = fig.subplots(1, 2, width_ratios=[1, 2])
    _show(image_ax, to_images(picture[None])[0], "32x32, as the network sees it")
    names, probabilities = [g.name for g in guesses][::-1], [g.probability for g in guesses][::-1]
    bars.barh(names, probabilities, color="tab:blue")
    for y, p in enumerate(probabilities):
        bars.text(p, y, f" {p:.1%}", va="center", fontsize=8)
    bars.set_xlim(0, 1.15)
    bars.set_xlabel("probability")
    return fig

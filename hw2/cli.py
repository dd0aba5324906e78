"""The command line front end: python -m hw2 download | train | test | predict | import | export | runs.
train's flags are the Config fields under their own names, explained by the Config's help (`python -m hw2 train
--help`); test reads the network from the checkpoint; predict names what a checkpoint sees in pictures; import
and export bring networks in and out; runs compares runs. What training and testing report (hw2.events) is
printed as lines on stdout, with a text progress bar on stderr (Lines), and error messages name parameters as
flags.

    python -m hw2 train --recipe smoke --modeldir runs/smoke   # a short run: does everything work?
    python -m hw2 test --modeldir runs/smoke                   # the network and its tta come from the checkpoint
    python -m hw2 train --resnet_version 1 --resnet_size 3     # He et al.'s 182 epochs: model_v1/
    python -m hw2 train --recipe fast                          # ResNet-20 in 16 epochs, for a small budget
    python -m hw2 train --recipe fast60                        # the fast recipe for 60 epochs
    python -m hw2 test --modeldir model_v1 --checkpoint 50 60
    python -m hw2 predict photos/ cat.jpg --modeldir runs/smoke  # the most probable classes of each picture
    python -m hw2 predict cat.jpg        # before any run in model_v1/: by the bundled ResNet-20 (hw2/pretrained/)
    python -m hw2 runs runs/smoke model_v1                     # the runs side by side
    python -m hw2 runs reports/r20_he runs/smoke --tensorboard tb  # and for TensorBoard: tensorboard --logdir tb
    python -m hw2 import resnet20-12fca82f.th --modeldir runs/r20_published  # a published network, then test it
    python -m hw2 export --format onnx --output resnet20.onnx  # the bundled ResNet-20 for onnxruntime
"""
import argparse
import dataclasses
import functools
import json
import sys

import numpy as np

from hw2.checkpoint import PRETRAINED, check_architecture, checkpoint_label
from hw2.config import FIELDS, RECIPES, Config, config_from, help_text
from hw2.data import dataset_spec, download, load_test_data
from hw2.errors import Hw2Error, ImageError, Interrupted, field, flag_words, format_default, worded_as
from hw2.evaluate import checkpoint_tta, checkpoints_to_test, classify, evaluate_checkpoints, restore
from hw2.events import Lines
from hw2.export import checkpoint_to_export, export
from hw2.images import image_files, read_file
from hw2.modeldir import data_dir_of, read_checkpoint
from hw2.models import ARCHITECTURE
from hw2.published import LAYOUT, import_checkpoint
from hw2.runs import runs_table
from hw2.tensorboard import require_tensorboard, write_runs
from hw2.runtime import dtype_name, resolve_device, resolve_dtype
from hw2.train import train


class _HelpWithDefaults(argparse.HelpFormatter):
    """Ends each flag's help with its default, unless the help already says what the default is."""

    def _get_help_string(self, action):
        if action.default in (None, argparse.SUPPRESS) or "(default" in action.help:
            return action.help
        return f"{action.help} (default: {format_default(action.default)})"


GIVEN_ARCHITECTURE = [name for name in ARCHITECTURE if name in FIELDS]  # num_classes follows from the dataset
# test's and predict's --modeldir: the rule by which they use the bundled network (checkpoints_to_test's pretrained)
MODELDIR_TO_USE = ("the run whose checkpoints to use ('': {default}, or while that holds none and no --checkpoint "
                   "is asked for, the bundled ResNet-20 in hw2/pretrained/)")


def add_flag(parser, name, given_only=False, **overrides):
    """--name for the Config field `name`: typed from its default, explained by its help. given_only: the parsed
    arguments hold it only when it is given (a recipe supplies the others), the help still naming its default."""
    field = Config.__dataclass_fields__[name]
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    flag = dict(default=default, help=help_text(name))
    if given_only:
        flag.update(default=argparse.SUPPRESS, help=f"{help_text(name)} (default: {format_default(default)})")
    if isinstance(default, bool):
        flag.update(action=argparse.BooleanOptionalAction)
    elif isinstance(default, list):
        flag.update(type=int, nargs="*", metavar="EPOCH")
    else:
        flag.update(type=type(default), metavar={int: "N", float: "X", str: "TEXT"}[type(default)])
    parser.add_argument(f"--{name}", **{**flag, **overrides})


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m hw2", description="ResNet v1/v2 on CIFAR-10 (He et al.)",
                                     allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    command = functools.partial(commands.add_parser, allow_abbrev=False, formatter_class=_HelpWithDefaults)

    fetch = command("download", help="download and extract CIFAR-10 (or --dataset cifar100) into --data_dir")
    add_flag(fetch, "dataset")
    add_flag(fetch, "data_dir")

    trainer = command("train", help="train a network, writing checkpoints and metrics.csv to --modeldir")
    recipes = "; ".join(f"{name}: " + (", ".join(f"{k}={format_default(v)}" for k, v in recipe.items())
                                       or "He et al.'s recipe, the defaults below") for name, recipe in RECIPES.items())
    trainer.add_argument("--recipe", choices=RECIPES, default="he",
                         help=f"start from a recipe ({recipes}); the flags given still override it")
    for name in FIELDS:
        add_flag(trainer, name, given_only=True)

    tester = command("test", help="test accuracy of checkpoints in --modeldir (the network as each was trained)")
    tester.add_argument("--checkpoint", "--checkpoints", dest="checkpoints", type=epoch_or_best, nargs="+",
                        metavar="EPOCH|best", help="epochs of the checkpoints to test, or best (model-best.ckpt: the "
                                                   "best validation accuracy) (default: the newest checkpoint)")
    add_flag(tester, "modeldir", help=MODELDIR_TO_USE.format(default="model_v{resnet_version}"))
    add_flag(tester, "data_dir", default=None, help=f"{help_text('data_dir')} (default: the one the run read, from "
                                                    "its resolved.json, where it still exists; else data)")
    for name in ("device", "dtype"):
        add_flag(tester, name)
    add_flag(tester, "tta", default=None, help=f"{help_text('tta')} (default: as the checkpoint was trained)")
    for name in (*GIVEN_ARCHITECTURE, "dataset"):  # read from the checkpoint: given, they only check it
        add_flag(tester, name, default=argparse.SUPPRESS,
                 help=f"{help_text(name)} (default: the checkpoint's; given, the checkpoint must have it)")

    predictor = command("predict", help="the most probable classes a checkpoint gives pictures (brought to 32x32: "
                                         "the largest central square, downscaled)")
    predictor.add_argument("images", nargs="+", metavar="IMAGE",
                           help="picture files (PNG, JPEG, WebP, GIF, ...) or folders of them")
    # --checkpoints too, as test has it: checkpoints_to_test's message names it
    predictor.add_argument("--checkpoint", "--checkpoints", type=epoch_or_best, metavar="EPOCH|best",
                           help="the checkpoint's epoch, or best (model-best.ckpt) (default: the newest checkpoint)")
    predictor.add_argument("--top", type=at_least_one, default=5, metavar="K",
                           help="how many of the most probable classes to show")
    predictor.add_argument("--json", action="store_true", help="print one JSON document, for scripts")
    add_flag(predictor, "modeldir", help=MODELDIR_TO_USE.format(default="model_v1"))
    for name in ("device", "dtype"):
        add_flag(predictor, name)
    add_flag(predictor, "tta", default=None, help=f"{help_text('tta')} (default: as the checkpoint was trained)")

    importer = command("import", help=f"write a published CIFAR-10 ResNet ({LAYOUT}'s layout) as an hw2 "
                                      "checkpoint, model-0.ckpt in --modeldir, for test and train --resume")
    importer.add_argument("file", metavar="FILE", help="the published checkpoint, e.g. resnet20-12fca82f.th")
    importer.add_argument("--modeldir", required=True, metavar="DIR", help="a new folder for the hw2 checkpoint")
    importer.add_argument("--allow_unsafe_load", action="store_true",
                          help="load a file that safe loading (torch.load with weights_only=True) refuses; "
                               "this can run code the file holds: only for a file you trust")

    exporter = command("export", help="write a checkpoint's network as an ONNX or TorchScript file that takes float "
                                      "RGB images in [0, 1], [N, 3, 32, 32], normalises them inside and gives logits")
    exporter.add_argument("--modeldir", metavar="DIR",
                          help="the run whose checkpoint to export (default: the bundled ResNet-20 in hw2/pretrained/)")
    # --checkpoints too, as test has it: checkpoints_to_test's message names it
    exporter.add_argument("--checkpoint", "--checkpoints", type=epoch_or_best, metavar="EPOCH|best",
                          help="the checkpoint's epoch, or best (model-best.ckpt) (default: the newest checkpoint)")
    exporter.add_argument("--format", required=True, metavar="onnx|torchscript",
                          help="onnx (runs with onnxruntime; needs pip install onnx onnxscript onnxruntime) or "
                               "torchscript (runs with torch.jit.load)")
    exporter.add_argument("--output", required=True, metavar="FILE", help="the file to write")

    runs = command("runs", help="compare runs: one row per modeldir (or folder of reports/) with its network, "
                                "recipe, epochs, validation and test accuracy, time and device")
    runs.add_argument("modeldirs", nargs="+", metavar="DIR", help="the runs' modeldirs")
    runs.add_argument("--tensorboard", metavar="OUT",
                      help="also write the runs' epochs, from their metrics.csv, as TensorBoard event files in "
                           "OUT/<the run's folder name>/, to see with tensorboard --logdir OUT beside runs "
                           "trained with --tensorboard (needs pip install tensorboard)")
    return parser


def test(args):
    """Print the test accuracy of each checkpoint (default: the newest; the bundled network by MODELDIR_TO_USE's
    rule), and its accuracy on each class, on the test images of its data set (or of --dataset, which each
    checkpoint must then have been trained on), read from --data_dir or else where the run read its data."""
    given = vars(args)
    config = Config(**{name: given[name] for name in ("modeldir", "device", "dtype", "resnet_version", "dataset")
                       if name in given})  # checks them
    paths = checkpoints_to_test(config.checkpoint_dir, args.checkpoints, pretrained=not args.modeldir)
    config = dataclasses.replace(config, data_dir=args.data_dir or data_dir_of(paths[0].parent))
    dataset = given.get("dataset") or read_checkpoint(paths[0]).config["dataset"]
    spec = dataset_spec(dataset)
    device = resolve_device(config.device)
    dtype = dtype_name(resolve_dtype(config.dtype, device))
    architecture = {name: given[name] for name in GIVEN_ARCHITECTURE if name in given} | {"dataset": dataset}
    for path in paths:  # a checkpoint of another network or data set is refused before any data is read
        check_architecture(read_checkpoint(path), architecture, path)
    tested = f"{', '.join(p.name for p in paths)} of {config.checkpoint_dir}"
    if paths == [PRETRAINED]:
        tested = f"{checkpoint_label(PRETRAINED)}, as {config.checkpoint_dir} holds no checkpoints,"
    print(f"Testing {tested} on the {spec.name} test batch in {config.data_dir} ({device}, {dtype})", flush=True)
    download(config.data_dir, need=[spec.test], dataset=dataset)
    x_test, y_test = load_test_data(config.data_dir, dataset)
    results = evaluate_checkpoints(paths, x_test, y_test, device, config.dtype, args.tta, architecture,
                                   Lines())
    width = max(map(len, spec.classes))
    for path, result in zip(paths, results):
        print(f"Per-class test accuracy of {path.name}:")
        for name, accuracy in zip(spec.classes, result["per_class_accuracy"].tolist()):
            print(f"  {name:<{width}} {accuracy:.4f}")


def epoch_or_best(text):
    """predict's --checkpoint: an epoch, or 'best'."""
    if text == "best":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an epoch nor best") from None


def at_least_one(text):
    """A positive integer flag."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def read_pictures(arguments):
    """The pictures the IMAGE arguments name (a folder: the picture files in it) -> [(file, uint8 [3072] or the
    ImageError that says why it cannot be used)], in order."""
    pictures = []
    for argument in arguments:
        try:
            files = image_files(argument)
        except ImageError as e:  # a folder without pictures
            pictures.append((argument, e))
            continue
        for file in files:
            try:
                pictures.append((str(file), read_file(file)))
            except ImageError as e:
                pictures.append((str(file), e))
    return pictures


def predict_pictures(args):
    """Print the `--top` most probable classes of each picture, as text or (--json) one JSON document -> the exit
    status: 2 when a picture could not be read (its one line on stderr, or its "error" in the JSON), after all
    the others were predicted."""
    config = Config(modeldir=args.modeldir, device=args.device, dtype=args.dtype)  # checks them
    [path] = checkpoints_to_test(config.checkpoint_dir, [] if args.checkpoint is None else [args.checkpoint],
                                 pretrained=not args.modeldir)
    model, checkpoint = restore(path, config.device)
    device = next(model.parameters()).device
    dtype = dtype_name(resolve_dtype(config.dtype, device))
    tta = checkpoint_tta(checkpoint, args.tta)
    pictures = read_pictures(args.images)
    readable = np.array([x for _, x in pictures if not isinstance(x, ImageError)], np.uint8).reshape(-1, 3072)
    results = iter(classify((model, checkpoint), readable, args.top, tta, dtype=dtype))
    entries = []
    for file, x in pictures:
        entries.append({"file": file, "error": str(x)} if isinstance(x, ImageError)
                       else {"file": file, **named(next(results))})
    failed = sum("error" in entry for entry in entries)
    if args.json:
        print(json.dumps({"checkpoint": str(path), "device": str(device), "dtype": dtype, "tta": tta,
                          "images": entries}, indent=1))
        return 2 if failed else 0
    done = len(entries) - failed
    print(f"Classes of {done} picture{'s' if done != 1 else ''} by {checkpoint_label(path)} ({device}, {dtype}"
          f"{', with flip tta' if tta else ''})", flush=True)
    for entry in entries:
        if "error" in entry:
            print(f"error: {entry['error']}", file=sys.stderr, flush=True)
            continue
        print(entry["file"])
        width = max(len(guess["class"]) for guess in entry["top"])
        for guess in entry["top"]:
            print(f"  {guess['class']:<{width}} {guess['probability']:6.1%}", flush=True)
    return 2 if failed else 0


def named(result):
    """A classify result as the JSON has it: the class, its index and probability, and the top classes."""
    top = [{"class": guess.name, "index": guess.index, "probability": guess.probability} for guess in result["top"]]
    return {**top[0], "top": top}


def import_published(args):
    """Import a published checkpoint and say how to test and fine-tune it."""
    path, config = import_checkpoint(args.file, args.modeldir, args.allow_unsafe_load)
    flags = " ".join(f"--{name} {getattr(config, name)}" for name in GIVEN_ARCHITECTURE
                     if getattr(config, name) != getattr(Config(), name))  # what train --resume must be told
    print(f"Imported {args.file} into {path}: ResNet-{6 * config.resnet_size + 2}, version 1 with zero-padding "
          f"shortcuts, resnet_size {config.resnet_size}, first_num_filters {config.first_num_filters}, with the "
          "normalisation it was trained with\n"
          f"Test it:      python -m hw2 test --modeldir {args.modeldir}\n"
          f"Fine-tune it: python -m hw2 train --resume --modeldir {args.modeldir} {flags} --epochs N --learning_rate X")


def export_network(args):
    """Export a checkpoint's network (default: the bundled ResNet-20) and say what the file takes and gives."""
    path = checkpoint_to_export(args.modeldir, args.checkpoint)
    classifier, difference = export(path, args.format, args.output)
    print(f"Exported {checkpoint_label(path)} to {args.output} ({args.format}, BatchNorm folded): float RGB images "
          f"in [0, 1], [N, 3, 32, 32] -> logits [N, {len(classifier.classes)}] of {', '.join(classifier.classes)}. "
          f"Its logits differ from hw2's by at most {difference:.1e}; it does no test-time augmentation")


def main(argv=None):
    """Run a command -> the exit status: 0, 2 for an expected failure (its one line on stderr), or 128 + the
    signal that stopped a training run."""
    args = build_parser().parse_args(argv)
    with worded_as(flag_words):  # messages name parameters as flags
        try:
            if args.command == "download":
                print(f"{dataset_spec(args.dataset).name} is in {download(args.data_dir, dataset=args.dataset)}")
            elif args.command == "train":
                given = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
                train(config_from(args.recipe, **given), Lines())
            elif args.command == "import":
                import_published(args)
            elif args.command == "export":
                export_network(args)
            elif args.command == "runs":
                if args.tensorboard:
                    require_tensorboard()  # without the package: refused before any run is read
                print(runs_table(args.modeldirs))
                if args.tensorboard:
                    written = write_runs(args.modeldirs, args.tensorboard)
                    print(f"TensorBoard event files of {len(written)} run{'s' if len(written) != 1 else ''} in "
                          f"{args.tensorboard}: tensorboard --logdir {args.tensorboard}")
            elif args.command == "predict":
                return predict_pictures(args)
            else:
                test(args)
        except Interrupted as e:
            print(e, file=sys.stderr)
            return 128 + e.signum
        except KeyboardInterrupt:
            intact = f"; the checkpoints already in modeldir are intact (continue with {field('resume', True)})"
            print(f"stopped at once{intact if args.command == 'train' else ''}", file=sys.stderr)
            return 130
        except Hw2Error as e:  # expected failures, each with what to do; anything else keeps its traceback
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


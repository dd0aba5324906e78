"""The command line front end: python -m hw2 download | train | test | import | runs. train's flags are the Config
fields under their own names, explained by the Config's help (`python -m hw2 train --help`); test reads the
network from the checkpoint; runs compares runs. What training and testing report (hw2.events) is printed as
lines on stdout, with a text progress bar on stderr (Lines), and error messages name parameters as flags.

    python -m hw2 train --recipe smoke --modeldir runs/smoke   # about a minute: does everything work?
    python -m hw2 test --modeldir runs/smoke                   # the network and its tta come from the checkpoint
    python -m hw2 train --resnet_version 1 --resnet_size 3     # He et al.'s 182 epochs: model_v1/
    python -m hw2 train --recipe fast                          # ResNet-20 to about 86% in 26-28 minutes of a 2-core CPU
    python -m hw2 train --recipe fast60                        # to about 87.7% in 60 epochs, about 100 minutes
    python -m hw2 test --modeldir model_v1 --checkpoint 50 60
    python -m hw2 runs runs/smoke model_v1                     # the runs side by side
    python -m hw2 import resnet20-12fca82f.th --modeldir runs/r20_published  # a published network, then test it
"""
import argparse
import dataclasses
import functools
import sys

from hw2.config import RECIPES, Config, config_from, help_text
from hw2.data import CLASSES, TEST_BATCH, download, load_test_data
from hw2.errors import Hw2Error, Interrupted, flag_words, format_default
from hw2.evaluate import checkpoints_to_test, evaluate_checkpoints
from hw2.events import Lines
from hw2.models import ARCHITECTURE
from hw2.published import LAYOUT, import_checkpoint
from hw2.runs import runs_table
from hw2.runtime import resolve_device, resolve_dtype
from hw2.train import train


class _HelpWithDefaults(argparse.HelpFormatter):
    """Ends each flag's help with its default, unless the help already says what the default is."""

    def _get_help_string(self, action):
        if action.default in (None, argparse.SUPPRESS) or "(default" in action.help:
            return action.help
        return f"{action.help} (default: {format_default(action.default)})"


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

    fetch = command("download", help="download and extract CIFAR-10 into --data_dir")
    add_flag(fetch, "data_dir")

    trainer = command("train", help="train a network, writing checkpoints and metrics.csv to --modeldir")
    recipes = "; ".join(f"{name}: " + (", ".join(f"{k}={format_default(v)}" for k, v in recipe.items())
                                       or "He et al.'s recipe, the defaults below") for name, recipe in RECIPES.items())
    trainer.add_argument("--recipe", choices=RECIPES, default="he",
                         help=f"start from a recipe ({recipes}); the flags given still override it")
    for f in dataclasses.fields(Config):
        add_flag(trainer, f.name, given_only=True)

    tester = command("test", help="test accuracy of checkpoints in --modeldir (the network as each was trained)")
    tester.add_argument("--checkpoint", "--checkpoints", dest="checkpoints", type=int, nargs="+", metavar="EPOCH",
                        help="epochs of the checkpoints to test (default: the newest checkpoint)")
    for name in ("modeldir", "data_dir", "device", "dtype"):
        add_flag(tester, name)
    add_flag(tester, "tta", default=None, help=f"{help_text('tta')} (default: as the checkpoint was trained)")
    for name in ARCHITECTURE:  # read from the checkpoint: given, they only check it
        add_flag(tester, name, default=argparse.SUPPRESS,
                 help=f"{help_text(name)} (default: the checkpoint's; given, the checkpoint must have it)")

    importer = command("import", help=f"write a published CIFAR-10 ResNet ({LAYOUT}'s layout) as an hw2 "
                                      "checkpoint, model-0.ckpt in --modeldir, for test and train --resume")
    importer.add_argument("file", metavar="FILE", help="the published checkpoint, e.g. resnet20-12fca82f.th")
    importer.add_argument("--modeldir", required=True, metavar="DIR", help="a new folder for the hw2 checkpoint")
    importer.add_argument("--allow_unsafe_load", action="store_true",
                          help="load a file that safe loading (torch.load with weights_only=True) refuses; "
                               "this can run code the file holds: only for a file you trust")

    runs = command("runs", help="compare runs: one row per modeldir (or folder of reports/) with its network, "
                                "recipe, epochs, validation and test accuracy, time and device")
    runs.add_argument("modeldirs", nargs="+", metavar="DIR", help="the runs' modeldirs")
    return parser


def test(args):
    """Print the test accuracy of each checkpoint (default: the newest), and its accuracy on each class."""
    given = vars(args)
    config = Config(**{name: given[name] for name in ("modeldir", "data_dir", "device", "dtype", "resnet_version")
                       if name in given})  # checks them, and gives the default modeldir
    paths = checkpoints_to_test(config.checkpoint_dir, args.checkpoints)
    device = resolve_device(config.device)
    dtype = str(resolve_dtype(config.dtype, device)).removeprefix("torch.")
    print(f"Testing {', '.join(p.name for p in paths)} of {config.checkpoint_dir} on the CIFAR-10 test batch in "
          f"{config.data_dir} ({device}, {dtype})", flush=True)
    download(config.data_dir, need=[TEST_BATCH])
    x_test, y_test = load_test_data(config.data_dir)
    architecture = {name: given[name] for name in ARCHITECTURE if name in given}
    results = evaluate_checkpoints(paths, x_test, y_test, device, config.dtype, args.tta, architecture,
                                   Lines(flag_words))
    for path, result in zip(paths, results):
        print(f"Per-class test accuracy of {path.name}:")
        for name, accuracy in zip(CLASSES, result["per_class_accuracy"].tolist()):
            print(f"  {name:<10} {accuracy:.4f}")


def import_published(args):
    """Import a published checkpoint and say how to test and fine-tune it."""
    path, config = import_checkpoint(args.file, args.modeldir, args.allow_unsafe_load)
    flags = " ".join(f"--{name} {getattr(config, name)}" for name in ARCHITECTURE
                     if getattr(config, name) != getattr(Config(), name))  # what train --resume must be told
    print(f"Imported {args.file} into {path}: ResNet-{6 * config.resnet_size + 2}, version 1 with zero-padding "
          f"shortcuts, resnet_size {config.resnet_size}, first_num_filters {config.first_num_filters}, with the "
          "normalisation it was trained with\n"
          f"Test it:      python -m hw2 test --modeldir {args.modeldir}\n"
          f"Fine-tune it: python -m hw2 train --resume --modeldir {args.modeldir} {flags} --epochs N --learning_rate X")


def main(argv=None):
    """Run a command -> the exit status: 0, 2 for an expected failure (its one line on stderr), or 128 + the
    signal that stopped a training run."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "download":
            print(f"CIFAR-10 is in {download(args.data_dir)}")
        elif args.command == "train":
            given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
            train(config_from(args.recipe, **given), Lines(flag_words))
        elif args.command == "import":
            import_published(args)
        elif args.command == "runs":
            print(runs_table(args.modeldirs))
        else:
            test(args)
    except Interrupted as e:
        e.words = flag_words
        print(e, file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        intact = f"; the checkpoints already in modeldir are intact (continue with {flag_words('resume', True)})"
        print(f"stopped at once{intact if args.command == 'train' else ''}", file=sys.stderr)
        return 130
    except Hw2Error as e:  # expected failures, each with what to do; anything else keeps its traceback
        e.words = flag_words
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


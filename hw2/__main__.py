"""Command line: python -m hw2 download | train | test. Flags are the Config fields, under their own names.

    python -m hw2 download
    python -m hw2 train --resnet_version 1 --resnet_size 3 --epochs 182
    python -m hw2 train --recipe fast            # ResNet-20 to about 86% in 26-28 minutes of a 2-core CPU
    python -m hw2 test --resnet_version 1 --checkpoint 50 60
"""
import argparse
import dataclasses
import sys

from hw2.checkpoint import CheckpointError
from hw2.data import CLASSES, DataError, download, load_data
from hw2.evaluate import checkpoints_to_test, evaluate_checkpoints
from hw2.config import FAST_RECIPE, RECIPES, Config
from hw2.train import Interrupted, train



def add_config_flags(parser):
    """One --flag per Config field, typed from its default."""
    for f in dataclasses.fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, list):
            parser.add_argument(f"--{f.name}", type=int, nargs="*", default=default, metavar="EPOCH")
        else:
            parser.add_argument(f"--{f.name}", type=type(default), default=default)


def config_from(args):
    return Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})


def test(config, epochs):
    """Print the test accuracy of each checkpoint epoch (default: the newest checkpoint)."""
    paths = checkpoints_to_test(config.checkpoint_dir, epochs)
    download(config.data_dir)
    _, _, x_test, y_test = load_data(config.data_dir)
    results = evaluate_checkpoints(paths, x_test, y_test, config.device, config.dtype, config.tta, config)
    for path, result in zip(paths, results):
        print(f"Per-class test accuracy of {path.name}:")
        for name, accuracy in zip(CLASSES, result["per_class_accuracy"].tolist()):
            print(f"  {name:<10} {accuracy:.4f}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hw2", description="ResNet v1/v2 on CIFAR-10 (He et al.)")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("download", help="download and extract CIFAR-10 into --data_dir")
    fetch.add_argument("--data_dir", default=Config.data_dir)
    trainer = commands.add_parser("train", help="train a network, writing checkpoints and metrics.csv to --modeldir")
    trainer.add_argument("--recipe", choices=RECIPES, default="he",
                         help="he: He et al.'s 182-epoch recipe (default); fast: " +
                              ", ".join(f"{k}={v}" for k, v in FAST_RECIPE.items()) + " (flags still override)")
    tester = commands.add_parser("test", help="test accuracy of checkpoints in --modeldir")
    tester.add_argument("--checkpoint", type=int, nargs="+", metavar="EPOCH", help="checkpoint epochs (default: newest)")
    for sub in (trainer, tester):
        add_config_flags(sub)

    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            print(f"CIFAR-10 is in {download(args.data_dir)}")
        elif args.command == "train":
            trainer.set_defaults(**RECIPES[args.recipe])
            args = parser.parse_args(argv)  # again, so that explicit flags win over the recipe
            train(config_from(args))
        else:
            test(config_from(args), args.checkpoint)
    except Interrupted as e:
        print(e, file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("stopped at once; the checkpoints already in modeldir are intact (continue with --resume)", file=sys.stderr)
        return 130
    except (ValueError, DataError, CheckpointError, FileNotFoundError, FileExistsError, PermissionError,
            RuntimeError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write the network hw2 ships, hw2/pretrained/resnet20_v1.ckpt (hw2.checkpoint.PRETRAINED), from a training
run's checkpoint: its weights (their moving average, where the run kept one: what evaluation uses), its config,
normalisation and epoch, and nothing a run needs to continue (optimizer, metrics, random states). The paths in
its config, data_dir and modeldir, take their defaults: they named folders of the machine that trained it.

    python benchmarks/bundle_pretrained.py RUN/model-182.ckpt hw2/pretrained/resnet20_v1.ckpt

RUN is He et al.'s recipe, `python -m hw2 train --resnet_version 1 --resnet_size 3 --save_interval 10`
(hw2/pretrained/README.md). Prints the file's size.
"""
import argparse
import dataclasses
from pathlib import Path

from hw2.checkpoint import Checkpoint
from hw2.config import Config


def weights_only(checkpoint):
    """The Checkpoint as a network to use rather than a run to continue."""
    config = dataclasses.replace(Config.from_dict(checkpoint.config), data_dir=Config.data_dir,
                                 modeldir=Config.modeldir)
    return Checkpoint(checkpoint.average or checkpoint.model, dataclasses.asdict(config), checkpoint.mean,
                      checkpoint.std, checkpoint.epoch)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a training run's checkpoint, e.g. RUN/model-182.ckpt")
    parser.add_argument("dest", help="the file to write, e.g. hw2/pretrained/resnet20_v1.ckpt")
    args = parser.parse_args()
    weights_only(Checkpoint.load(args.source)).save(args.dest)
    print(f"wrote {args.dest}: {Path(args.dest).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()

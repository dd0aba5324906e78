"""Data-parallel training under torchrun: 2 CPU processes (gloo) train a few steps on the synthetic set.

This file is also the worker torchrun starts: each process calls hw2.train.train, records the uint8
images its Loader drew (through a pass-through wrapper of augment_batch) and saves them with its
replica's parameters to rank{RANK}.pt.

BatchNorm running statistics are not compared: DDP broadcasts rank 0's at the start of every forward
pass, so after the last step each replica holds its own batch's update of them; rank 0's are the ones
evaluated and checkpointed.

A second run signals one process only: the processes compare stop requests every CHECK_EVERY steps (2
here), so both stop at the same step and rank 0 writes the mid-epoch checkpoint.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hw2.augment
import hw2.train
from conftest import TEST_RUN
from hw2.checkpoint import Checkpoint
from hw2.config import Config
from hw2.errors import Interrupted
from hw2.events import Lines
from hw2.train import train

STEPS_PER_EPOCH = 4  # 160 training images, 20 per process a step, 2 processes


def worker(settings, out):
    rank = int(os.environ["RANK"])
    seen, augment = [], hw2.augment.augment_batch

    def recording(images, generator, flip=None):
        seen.append(images.clone())
        return augment(images, generator, flip)

    hw2.augment.augment_batch = recording
    if settings.pop("signal_rank_1", False):  # only rank 1 is signalled; the processes agree every 2 steps
        hw2.train.CHECK_EVERY = 2
        if rank == 1:
            hw2.train._StopRequests.__enter__ = lambda self: setattr(self, "signum", signal.SIGTERM) or self
        try:
            train(Config(**settings, modeldir=str(Path(out) / f"model{rank}")), Lines())
        except Interrupted as e:
            (Path(out) / f"interrupted{rank}").write_text(str(e.path))
        return
    # each process gets its own modeldir, so that whatever a process other than rank 0 wrote would show
    model, _ = train(Config(**settings, modeldir=str(Path(out) / f"model{rank}")), Lines())  # rank 0's lines only
    parameters = {name: p.detach() for name, p in model.named_parameters()}
    torch.save({"parameters": parameters, "seen": seen}, Path(out) / f"rank{rank}.pt")
    assert not torch.distributed.is_initialized(), "train() ends the process group it started"


SETTINGS = {**TEST_RUN, "batch_size": 40, "epochs": 2, "lr_milestones": [1], "save_interval": 1}  # 20 a process


def torchrun(settings, out):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          __file__, json.dumps(settings), str(out)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.mark.slow
def test_two_processes_train_identical_replicas_on_distinct_shards(cifar_dir, tmp_path):
    run = torchrun({**SETTINGS, "data_dir": str(cifar_dir)}, tmp_path)
    replicas = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    # identical weights: DDP averaged the gradients, so both replicas took the same steps
    params = [r["parameters"] for r in replicas]
    assert all(torch.equal(params[0][name], params[1][name]) for name in params[0])

    # one process wrote checkpoints and metrics, the other nothing; rank 0's last checkpoint holds the
    # shared weights, which moved during the second epoch
    assert sorted(p.name for p in (tmp_path / "model0").iterdir()) == [
        "config.json", "log.txt", "metrics.csv", "model-1.ckpt", "model-2.ckpt", "model-best.ckpt", "resolved.json"]
    assert not (tmp_path / "model1").exists()
    first, last = (Checkpoint.load(tmp_path / "model0" / f"model-{e}.ckpt").model for e in (1, 2))
    assert all(torch.equal(last[name], params[0][name]) for name in params[0])
    assert not all(torch.equal(first[name], params[0][name]) for name in params[0])
    assert [line.split(" Loss")[0] for line in run.stdout.splitlines() if line.startswith("Epoch ")] == \
        ["Epoch 1", "Epoch 2"]

    # every epoch the two processes drew disjoint halves of the 160 training images, a new split each epoch
    def images(rank, epoch):
        batches = replicas[rank]["seen"][epoch * STEPS_PER_EPOCH:(epoch + 1) * STEPS_PER_EPOCH]
        return {image.numpy().tobytes() for batch in batches for image in batch}

    assert all(len(replica["seen"]) == 2 * STEPS_PER_EPOCH for replica in replicas)
    for epoch in (0, 1):
        assert len(images(0, epoch)) == len(images(1, epoch)) == 80
        assert len(images(0, epoch) | images(1, epoch)) == 160
    assert images(0, 0) != images(0, 1)


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_at_the_same_step(cifar_dir, tmp_path):
    torchrun({**SETTINGS, "data_dir": str(cifar_dir), "signal_rank_1": True}, tmp_path)
    # rank 1 asked to stop before the first step; at step 2, where they compare, both stop; rank 0 writes
    assert (tmp_path / "interrupted0").read_text() == str(tmp_path / "model0" / "model-1-step2.ckpt")
    assert (tmp_path / "interrupted1").read_text() == "None"
    checkpoint = Checkpoint.load(tmp_path / "model0" / "model-1-step2.ckpt")
    assert (checkpoint.epoch, checkpoint.step) == (0, 2)


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]), sys.argv[2])

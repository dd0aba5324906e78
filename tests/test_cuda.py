"""hw2 on a CUDA GPU: training in each precision, compiled, resumed and without a host sync per step; the
Loader's uint8 data and augmentation on the device; a checkpoint evaluated on the GPU and the CPU; the
benchmark; two GPUs under torchrun. Skipped where torch sees no GPU (CI, the CPU development machines):
benchmarks/gpu.sh runs this file on a GPU machine."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import small_config, write_cifar
from hw2 import bench
from hw2.augment import Loader, augment_batch, step_generator
from hw2.checkpoint import Checkpoint
from hw2.data import load_data
from hw2.errors import Interrupted
from hw2.evaluate import evaluate_checkpoints
from hw2.events import Reporter
from hw2.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch sees none")

MEAN, STD = [100.0, 110.0, 120.0], [50.0, 60.0, 70.0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A synthetic CIFAR-10 of 1,000 training and 200 test images: room for runs of different lengths."""
    return write_cifar(tmp_path_factory.mktemp("cifar"), per_batch=200)


def gpu_config(data_dir, folder, **overrides):
    """small_config on the GPU, writing to folder/model: 400 of the 1,000 synthetic training images (20 steps
    an epoch), 100 held out, a checkpoint every epoch."""
    settings = dict(device="cuda", train_subset=400, valid_size=100, save_interval=1)
    return small_config(data_dir, folder, **{**settings, **overrides})


def relative_difference(a, b):
    """The largest ||a - b|| / ||b|| over the floating-point tensors of two state dicts."""
    return max(((a[k].float() - b[k].float()).norm() / b[k].float().norm().clamp(min=1e-12)).item()
               for k in b if b[k].is_floating_point())


def assert_learns(metrics):
    assert all(np.isfinite(row["train_loss"]) for row in metrics)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] and metrics[-1]["valid_acc"] > 0.3  # chance: 0.1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_training_on_the_gpu_learns_in_each_precision(data_dir, tmp_path, dtype):
    if dtype == "bfloat16" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bfloat16 is emulated before compute capability 8.0")
    model, metrics = train(gpu_config(data_dir, tmp_path, dtype=dtype))
    assert_learns(metrics)
    assert all(p.is_cuda for p in model.parameters())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    checkpoint = Checkpoint.load(tmp_path / "model" / "model-3.ckpt")
    assert all(t.device.type == "cpu" for t in checkpoint.model.values()), "checkpoints load on a CPU-only machine"
    assert bool(checkpoint.scaler) == (dtype == "float16"), "float16's loss scale is kept for a resume"


def test_compiled_training_on_the_gpu_learns(data_dir, tmp_path):
    _, metrics = train(gpu_config(data_dir, tmp_path, compile=True))
    assert_learns(metrics)


def test_training_waits_for_the_gpu_per_epoch_not_per_step(data_dir, tmp_path):
    """CUDA's sync debug mode warns at every operation that makes the host wait for the device (a read of a
    value, a copy from pageable memory); 30 more steps an epoch must add almost none."""
    def syncs(train_subset, folder):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train(gpu_config(data_dir, tmp_path / folder, epochs=2, train_subset=train_subset, save_interval=5))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message) for w in caught)

    syncs(200, "warm-up")  # cuDNN tries its kernels on the first batches of each shape: not counted
    few, many = syncs(200, "few"), syncs(800, "many")  # 10 and 40 steps an epoch, 2 epochs
    assert many - few < 60 // 4, f"{many - few} more host syncs for 60 more steps"


def test_an_interrupted_gpu_run_resumes_to_the_uninterrupted_weights(data_dir, tmp_path):
    config = gpu_config(data_dir, tmp_path / "whole")
    whole, whole_metrics = train(config)

    class InterruptAfterTheFirstEpoch(Reporter):
        def epoch_finished(self, row, metrics):
            if len(metrics) == 1:
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the run stops after its next step

    cut = dataclasses.replace(config, modeldir=str(tmp_path / "cut"))
    with pytest.raises(Interrupted) as stopped:
        train(cut, InterruptAfterTheFirstEpoch())
    assert stopped.value.path.name == "model-2-step1.ckpt"
    resumed, metrics = train(dataclasses.replace(cut, resume=True))
    assert [row["epoch"] for row in metrics] == [1, 2, 3]
    # the same steps in the same order; the GPU's kernels need not add in the same order twice, so close, not equal
    assert relative_difference(resumed.state_dict(), whole.state_dict()) < 1e-2
    assert metrics[-1]["valid_acc"] == pytest.approx(whole_metrics[-1]["valid_acc"], abs=0.05)


def test_the_loader_keeps_uint8_images_on_the_gpu_and_draws_batches_without_host_syncs():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (96, 3072), dtype=np.uint8), rng.integers(0, 10, 96)
    loader = Loader(x, y, 16, (MEAN, STD), "cuda", training=True)
    assert loader.x.is_cuda and loader.x.dtype == torch.uint8 and loader.mean.is_cuda
    batches = loader.batches(0)
    drawn = [next(batches)]  # the epoch's order goes to the device here, once an epoch
    torch.cuda.set_sync_debug_mode("error")
    try:
        drawn += list(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(drawn) == 6
    for _, images, labels in drawn:
        assert images.is_cuda and labels.is_cuda and images.dtype == torch.float32
        assert images.is_contiguous(memory_format=torch.channels_last)
    on_cpu = Loader(x, y, 16, (MEAN, STD), "cpu").batches()
    for (_, a, a_labels), (_, b, b_labels) in zip(Loader(x, y, 16, (MEAN, STD), "cuda").batches(), on_cpu):
        torch.testing.assert_close(a.cpu(), b)
        assert torch.equal(a_labels.cpu(), b_labels)


def test_gpu_augmentation_draws_every_pad_crop_flip_and_nothing_else():
    original = torch.arange(3072).remainder(251).add(1).to(torch.uint8).view(3, 32, 32)  # no zeros: crops differ
    out = augment_batch(original.repeat(3000, 1, 1, 1).cuda(), step_generator(0, 1, 2, device="cuda"))
    assert out.is_cuda and out.dtype == torch.uint8
    padded = F.pad(original, (4, 4, 4, 4))
    crops = [padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
    every = torch.stack(crops + [crop.flip(2) for crop in crops])  # the 162 pad-crop-flips
    assert torch.equal(torch.unique(out.cpu(), dim=0), torch.unique(every, dim=0))


def test_a_gpu_checkpoint_evaluates_alike_on_the_gpu_and_the_cpu(data_dir, tmp_path):
    train(gpu_config(data_dir, tmp_path, epochs=1))
    _, _, x_test, y_test = load_data(data_dir)
    path = tmp_path / "model" / "model-1.ckpt"
    on_gpu, on_cpu = (evaluate_checkpoints([path], x_test, y_test, device=device, dtype="float32")[0]
                      for device in ("cuda", "cpu"))
    # cuDNN convolves float32 in TF32 by default: close, not equal
    assert on_gpu["loss"] == pytest.approx(on_cpu["loss"], rel=1e-2)
    assert (on_gpu["predicted"] == on_cpu["predicted"]).float().mean() > 0.95


def test_bench_on_the_gpu_names_the_gpu_and_its_precision(data_dir, capsys):
    bench.main(["--resnet_size", "1", "--batch_size", "32", "--steps", "2", "--eval_images", "64", "--ref_eval_images",
                "8", "--windows", "2", "--device", "cuda", "--data_dir", str(data_dir)])
    report = json.loads(capsys.readouterr().out)
    major, minor = torch.cuda.get_device_capability()
    assert report["processor"] == torch.cuda.get_device_name() and report["cuda_capability"] == f"{major}.{minor}"
    assert report["native_bfloat16"] == (major >= 8) and report["dtype"] == ("bfloat16" if major >= 8 else "float16")
    assert all(rate > 0 for tasks in report["img_per_s"].values() for rate in tasks.values())
    assert report["peak_memory_mib"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_train_identical_replicas(cifar_dir, tmp_path):
    """test_distributed.py's torchrun worker, on NCCL: one process a GPU."""
    settings = dict(resnet_size=1, first_num_filters=8, batch_size=40, epochs=2, valid_size=40, save_interval=1,
                    data_dir=str(cifar_dir), device="cuda")
    worker = Path(__file__).with_name("test_distributed.py")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(worker), json.dumps(settings), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    params = [torch.load(tmp_path / f"rank{r}.pt", map_location="cpu")["parameters"] for r in (0, 1)]
    assert all(torch.equal(params[0][name], params[1][name]) for name in params[0])
    assert sorted(p.name for p in (tmp_path / "model0").iterdir()) == [
        "config.json", "log.txt", "metrics.csv", "model-1.ckpt", "model-2.ckpt", "model-best.ckpt", "resolved.json"]

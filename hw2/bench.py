"""Benchmark: hw2's training and evaluation against a plain reference written the assignment's way,
interleaved in one run, as one JSON object on stdout.

    python -m hw2.bench                                   # ResNet-20 (version 1), batch 128
    python -m hw2.bench --resnet_version 2 --resnet_size 3
    python -m hw2.bench --device cuda --compile --steps 50 --eval_images 10000

Images per second, medians over --windows timed windows after --warmup ones, each window running in turn:
  hw2 train      the training loop end to end: Loader (uint8 on the device, batched augmentation),
                 autocast forward, loss, backward, fused SGD step (float16: with a GradScaler)
  hw2 step       the same step alone on one ready batch
  hw2 eval       hw2.evaluate.evaluate on --eval_images test images with BatchNorm already folded into
                 the convolutions (batches of 64 on a CPU, 1,024 on a GPU)
  reference      the same three done plainly: a per-image numpy parse_record loop, float32 NCHW, and
                 evaluation one image at a time
Folding BatchNorm (a torch.fx trace, done once per evaluation in training) is timed on its own, once a
window, outside the evaluation window: fold_batchnorm_seconds.
FLOP rates are model FLOPs (forward counted once with FlopCounterMode; a training step as 3x forward)
beside bfloat16, float16 and float32 n x n matmul rates measured in the same run (n doubled up to where
three take 0.2 s); share_of_matmul is hw2's rate over the matmul rate of the dtype it ran in: how much of
what this machine's matrix units deliver the training and evaluation get. Peak memory is this process's maximum resident size on CPU (data set, both networks),
the most allocated on CUDA. On CUDA each window ends with a synchronize, so it times the device's work.
The data is CIFAR-10 when --data_dir holds it (labelled as hw2.data.data_label names it), else random
uint8 images of the same shape (the "data" field says which).

float16 on a CPU: autocast runs it, but without native float16 instructions (AVX512-FP16, AMX-FP16)
oneDNN falls back to reference kernels, many times slower than float32; it is meant for GPUs before compute
capability 8.0 (a Colab T4).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from hw2.augment import Loader, channel_stats, parse_record
from hw2.data import BATCH_DIR, data_label, load_data
from hw2.errors import Hw2Error, flag_words, worded_as
from hw2.evaluate import evaluate, fold_batchnorm
from hw2.models import ResNet
from hw2.runtime import (DTYPES, dtype_name, grad_scaler, processor, resolve_device, resolve_dtype,
                         use_fastest_kernels)
from hw2.state import make_optimizer
from hw2.train import train_step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, device):
    """Wall time of run(), the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def hw2_batches(loader):
    """Loader's training batches, epoch after epoch."""
    epoch = 0
    while True:
        for _, images, labels in loader.batches(epoch):
            yield images, labels
        epoch += 1


def reference_batches(x, y, batch_size, mean, std, rng):
    """The assignment's way: a shuffled order, each image through parse_record in a Python loop."""
    while True:
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            images = np.stack([parse_record(x[i], True, rng, mean, std) for i in index])
            yield torch.from_numpy(images), torch.from_numpy(y[index])


@torch.no_grad()
def reference_evaluate(model, x, y, mean, std, device):
    """Accuracy, one image at a time."""
    model.eval()
    correct = 0
    for record, label in zip(x, y):
        image = torch.from_numpy(parse_record(record, False, None, mean, std))[None].to(device)
        correct += int(model(image).argmax(1).item() == label)
    model.train()
    return correct / len(x)


def forward_flops(resnet_version, resnet_size):
    """FLOPs of one image's forward pass (convolutions and the linear layer; 2 per multiply-add)."""
    model = ResNet(resnet_version, resnet_size).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops()


def matmul_gflops(device, dtype, seconds=0.2, largest=8192, tries=5):
    """GFLOP/s of n x n matmuls, n doubled from 256 until three take `seconds` (or n reaches largest), then the
    fastest of `tries` rounds of three -> (n, rate). The fastest, because the rate is the machine's capacity:
    a round that another process slowed (a shared host) tells of that process, not of the matrix units."""
    n = 256
    while True:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))

        def three():
            return [a @ b for _ in range(3)]
        three()
        if timed(three, device) >= seconds or n >= largest:
            best = min(timed(three, device) for _ in range(tries)) / 3
            return n, 2 * n ** 3 / best / 1e9
        n *= 2


def peak_memory_mib(device):
    """The most memory allocated on a CUDA device; elsewhere this process's maximum resident size, or None where
    the system does not say (Windows, which has no `resource` module)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        import resource  # Unix only: imported here so that the benchmark starts on Windows
    except ImportError:
        return None
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 10 if sys.platform == "darwin" else 1)
    return kib / 2 ** 10  # ru_maxrss is in KiB on Linux, in bytes on macOS


def load(data_dir, seed):
    """(x_train, y_train, x_test, y_test, description): CIFAR-10 if data_dir holds it, else random."""
    if (Path(data_dir) / BATCH_DIR).is_dir():
        return (*load_data(data_dir), f"{data_label(data_dir)} from {data_dir}")
    rng = np.random.default_rng(seed)
    x_train, x_test = (rng.integers(0, 256, (n, 3072), dtype=np.uint8) for n in (50000, 10000))
    y_train, y_test = (rng.integers(0, 10, n) for n in (50000, 10000))
    return x_train, y_train, x_test, y_test, "random uint8 images (no CIFAR-10 in --data_dir)"


def parse_args(argv):
    """The flags, checked -> (args, the device); a bad one exits as argparse does, with status 2."""
    parser = argparse.ArgumentParser(prog="python -m hw2.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--resnet_version", type=int, default=1, choices=(1, 2))
    parser.add_argument("--resnet_size", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                        help="hw2's precision (auto: as training picks it); the reference is float32. "
                             "float16 on a CPU without native float16 is very slow (see above)")
    parser.add_argument("--compile", action="store_true", help="torch.compile hw2's training network")
    parser.add_argument("--steps", type=int, default=4, help="training steps in each timed window")
    parser.add_argument("--eval_images", type=int, default=2000, help="images hw2 evaluates a window")
    parser.add_argument("--ref_eval_images", type=int, default=256, help="images the reference evaluates a window")
    parser.add_argument("--windows", type=int, default=7, help="timed windows (medians are taken over them)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed windows first (torch.compile compiles in them)")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("resnet_size", "batch_size", "steps", "eval_images", "ref_eval_images", "windows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    try:
        with worded_as(flag_words):  # the message names the flag to change as this command spells it
            return args, resolve_device(args.device)
    except Hw2Error as e:
        parser.error(str(e))


def window_runs(args, device, dtype, train_data, test_data):
    """hw2's network and what a window runs, in turn: [(program, task, one window, images in it: None for the
    fold, which is reported in seconds)]. train_data and test_data are (uint8 images, labels)."""
    (x_train, y_train), (x_test, y_test) = train_data, test_data
    mean, std = channel_stats(x_train)
    x_eval, y_eval = x_test[:args.eval_images], y_test[:args.eval_images]
    x_ref_eval, y_ref_eval = x_test[:args.ref_eval_images], y_test[:args.ref_eval_images]
    steps, batch = args.steps, args.batch_size

    model = ResNet(args.resnet_version, args.resnet_size).to(device, memory_format=torch.channels_last)
    network = torch.compile(model) if args.compile else model
    optimizer, scaler = make_optimizer(model), grad_scaler(device, dtype)
    batches = hw2_batches(Loader(x_train, y_train, batch, (mean, std), device, training=True, seed=args.seed))
    ready = next(batches)
    folded = fold_batchnorm(model)  # refolded once a window, outside the evaluation window

    reference = ResNet(args.resnet_version, args.resnet_size).to(device)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    ref_batches = reference_batches(x_train, y_train, batch, mean, std, np.random.default_rng(args.seed))
    ref_ready = [t.to(device) for t in next(ref_batches)]

    def hw2_train():
        for _ in range(steps):
            train_step(network, optimizer, *next(batches), device, dtype, scaler=scaler)

    def hw2_step():
        for _ in range(steps):
            train_step(network, optimizer, *ready, device, dtype, scaler=scaler)

    def hw2_fold():
        nonlocal folded
        folded = fold_batchnorm(model)

    def ref_train():
        for _ in range(steps):
            images, labels = next(ref_batches)
            train_step(reference, ref_optimizer, images.to(device), labels.to(device), device, torch.float32)

    def ref_step():
        for _ in range(steps):
            train_step(reference, ref_optimizer, *ref_ready, device, torch.float32)

    return model, [
        ("hw2", "train", hw2_train, steps * batch),
        ("reference", "train", ref_train, steps * batch),
        ("hw2", "step", hw2_step, steps * batch),
        ("reference", "step", ref_step, steps * batch),
        ("hw2", "fold", hw2_fold, None),
        ("hw2", "eval", lambda: evaluate(folded, x_eval, y_eval, (mean, std), device=device, dtype=dtype, fold=False),
         len(x_eval)),
        ("reference", "eval", lambda: reference_evaluate(reference, x_ref_eval, y_ref_eval, mean, std, device),
         len(x_ref_eval)),
    ]


def measure(runs, warmup, windows, device):
    """Every run once a window, `warmup` untimed windows then `windows` timed ones -> (images per second,
    {program: {task: [one a timed window]}}, the fold's seconds [one a timed window])."""
    samples = {program: {task: [] for _, task, _, images in runs if images} for program in ("hw2", "reference")}
    fold_seconds = []
    for window in range(warmup + windows):
        for program, task, run, images in runs:
            elapsed = timed(run, device)
            if window < warmup:
                continue
            if images:
                samples[program][task].append(images / elapsed)
            else:
                fold_seconds.append(elapsed)
    return samples, fold_seconds


def summary(args, model, device, dtype, data, runs, samples, fold_seconds):
    """The JSON object: the settings, the medians of what `measure` timed and the ratios and FLOP rates derived
    from them, beside this machine's matmul rates (measured here) and its peak memory."""
    images = {(program, task): n for program, task, _, n in runs}
    median = {program: {task: statistics.median(rates) for task, rates in tasks.items()}
              for program, tasks in samples.items()}
    flops = forward_flops(args.resnet_version, args.resnet_size)
    matmul = {name: matmul_gflops(device, t) for name, t in DTYPES.items()}
    hw2_rates = {"train": median["hw2"]["train"] * 3 * flops / 1e9, "eval": median["hw2"]["eval"] * flops / 1e9}
    _, matmul_rate = matmul[dtype_name(dtype)]
    return {
        "model": f"ResNet-{model.depth} (version {args.resnet_version}, resnet_size {args.resnet_size})",
        "batch_size": args.batch_size,
        "device": str(device),
        **processor(device),
        "dtype": dtype_name(dtype),
        "reference_dtype": "float32",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "data": data,
        "compile": args.compile,
        "steps_per_window": args.steps, "eval_images": images["hw2", "eval"],
        "ref_eval_images": images["reference", "eval"],
        "warmup_windows": args.warmup, "windows": args.windows,
        "img_per_s": median,
        "img_per_s_windows": {program: {task: [round(r, 1) for r in rates] for task, rates in tasks.items()}
                              for program, tasks in samples.items()},
        "fold_batchnorm_seconds": statistics.median(fold_seconds),
        "ratios": {
            "hw2_train_end_to_end_over_step": median["hw2"]["train"] / median["hw2"]["step"],
            "train_hw2_over_reference": median["hw2"]["train"] / median["reference"]["train"],
            "eval_hw2_over_reference": median["hw2"]["eval"] / median["reference"]["eval"],
        },
        "mflop_per_image": {"forward": flops / 1e6, "train_step": 3 * flops / 1e6},
        "gflop_per_s": {
            **{f"hw2_{task}": rate for task, rate in hw2_rates.items()},
            **{f"matmul_{name}": rate for name, (_, rate) in matmul.items()},
        },
        "share_of_matmul": {f"hw2_{task}": rate / matmul_rate for task, rate in hw2_rates.items()},
        "matmul_size": {name: n for name, (n, _) in matmul.items()},
        "peak_memory_mib": peak_memory_mib(device),
    }


def main(argv=None):
    args, device = parse_args(argv)
    dtype = resolve_dtype(args.dtype, device)
    use_fastest_kernels(device)  # as training does
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test, data = load(args.data_dir, args.seed)
    model, runs = window_runs(args, device, dtype, (x_train, y_train), (x_test, y_test))
    samples, fold_seconds = measure(runs, args.warmup, args.windows, device)
    print(json.dumps(summary(args, model, device, dtype, data, runs, samples, fold_seconds), indent=2))


if __name__ == "__main__":
    main()

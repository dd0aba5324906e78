"""The benchmark's JSON on tiny settings: what it reports, not how fast."""
import json
import statistics

import pytest
import torch

from hw2 import bench
from hw2.runtime import resolve_dtype

TINY = ["--resnet_size", "1", "--batch_size", "8", "--steps", "1", "--eval_images", "16", "--ref_eval_images", "4",
        "--windows", "3", "--warmup", "1", "--device", "cpu"]


def test_bench_reports_hw2_and_reference_side_by_side(cifar_dir, capsys):
    bench.main(TINY + ["--data_dir", str(cifar_dir)])
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "ResNet-8 (version 1, resnet_size 1)"
    assert report["data"] == f"CIFAR-10 from {cifar_dir}"
    assert report["device"] == "cpu" and report["threads"] == torch.get_num_threads()
    assert report["dtype"] == str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    assert (report["eval_images"], report["ref_eval_images"], report["windows"]) == (16, 4, 3)
    for program in ("hw2", "reference"):
        for task in ("train", "step", "eval"):
            windows = report["img_per_s_windows"][program][task]
            assert len(windows) == 3 and all(rate > 0 for rate in windows)
            assert report["img_per_s"][program][task] == pytest.approx(statistics.median(windows), abs=0.1)
    rates, ratios = report["img_per_s"], report["ratios"]
    assert ratios["hw2_train_end_to_end_over_step"] == pytest.approx(rates["hw2"]["train"] / rates["hw2"]["step"])
    assert ratios["train_hw2_over_reference"] == pytest.approx(rates["hw2"]["train"] / rates["reference"]["train"])
    assert ratios["eval_hw2_over_reference"] == pytest.approx(rates["hw2"]["eval"] / rates["reference"]["eval"])
    flops = report["mflop_per_image"]
    assert flops["forward"] == pytest.approx(25.0, rel=0.01) and flops["train_step"] == pytest.approx(3 * flops["forward"])
    assert report["gflop_per_s"]["hw2_eval"] == pytest.approx(rates["hw2"]["eval"] * flops["forward"] / 1e3)
    assert report["gflop_per_s"]["matmul_float32"] > 0 and report["gflop_per_s"]["matmul_bfloat16"] > 0
    assert report["peak_memory_mib"] > 0


def test_random_images_stand_in_when_there_is_no_cifar(tmp_path):
    x_train, y_train, x_test, y_test, data = bench.load(tmp_path, seed=0)
    assert x_train.shape == (50000, 3072) and x_test.shape == (10000, 3072) and x_train.dtype == "uint8"
    assert y_train.shape == (50000,) and 0 <= y_test.min() and y_test.max() <= 9
    assert data.startswith("random uint8")


@pytest.mark.parametrize("flags,message", [(["--windows", "0"], "--windows must be >= 1"),
                                           (["--device", "tpu"], "--device tpu")])
def test_bad_flags_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit) as exit:
        bench.main(TINY + flags)
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(TINY + ["--device", "cuda"])
    assert "no CUDA GPU is available" in capsys.readouterr().err

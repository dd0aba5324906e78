"""The benchmark's JSON on tiny settings: what it reports, not how fast."""
import json
import statistics

import numpy as np
import pytest
import torch

import hw2.evaluate
from hw2 import bench
from hw2.evaluate import evaluate, fold_batchnorm
from hw2.models import ResNet
from hw2.runtime import resolve_dtype

TINY = ["--resnet_size", "1", "--batch_size", "8", "--steps", "1", "--eval_images", "16", "--ref_eval_images", "4",
        "--windows", "3", "--warmup", "1", "--device", "cpu"]


@pytest.mark.slow
def test_bench_reports_hw2_and_reference_side_by_side(cifar_dir, capsys):
    bench.main(TINY + ["--data_dir", str(cifar_dir)])
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "ResNet-8 (version 1, resnet_size 1)"
    assert report["data"] == f"CIFAR-10 (unofficial copy) from {cifar_dir}"
    assert report["device"] == "cpu" and report["threads"] == torch.get_num_threads()
    auto = resolve_dtype("auto", torch.device("cpu"))
    assert report["dtype"] == str(auto).removeprefix("torch.")
    assert report["native_bfloat16"] == (auto == torch.bfloat16) and report["processor"]
    assert (report["eval_images"], report["ref_eval_images"], report["windows"]) == (16, 4, 3)
    for program in ("hw2", "reference"):
        for task in ("train", "step", "eval"):
            windows = report["img_per_s_windows"][program][task]
            assert len(windows) == 3 and all(rate > 0 for rate in windows)
            assert report["img_per_s"][program][task] == pytest.approx(statistics.median(windows), abs=0.1)
    assert report["fold_batchnorm_seconds"] > 0
    rates, ratios = report["img_per_s"], report["ratios"]
    assert ratios["hw2_train_end_to_end_over_step"] == pytest.approx(rates["hw2"]["train"] / rates["hw2"]["step"])
    assert ratios["train_hw2_over_reference"] == pytest.approx(rates["hw2"]["train"] / rates["reference"]["train"])
    assert ratios["eval_hw2_over_reference"] == pytest.approx(rates["hw2"]["eval"] / rates["reference"]["eval"])
    flops = report["mflop_per_image"]
    assert flops["forward"] == pytest.approx(25.0, rel=0.01) and flops["train_step"] == pytest.approx(3 * flops["forward"])
    assert report["gflop_per_s"]["hw2_eval"] == pytest.approx(rates["hw2"]["eval"] * flops["forward"] / 1e3)
    assert all(report["gflop_per_s"][f"matmul_{t}"] > 0 for t in ("float32", "bfloat16", "float16"))
    assert report["peak_memory_mib"] > 0


def test_the_result_is_the_medians_of_the_windows_and_what_follows_from_them():
    """summary() on made-up windows: the medians, their ratios and the FLOP rates are derived, not measured."""
    args, device = bench.parse_args(TINY)
    samples = {"hw2": {"train": [100.0, 300.0, 200.0], "step": [400.0, 500.0, 400.0], "eval": [3000.0, 1000.0, 2000.0]},
               "reference": {"train": [50.0, 50.0, 60.0], "step": [90.0, 100.0, 110.0], "eval": [10.0, 30.0, 20.0]}}
    runs = [("hw2", "eval", None, 16), ("reference", "eval", None, 4)]  # summary reads only the image counts
    report = bench.summary(args, ResNet(1, 1), device, torch.float32, "made up", runs, samples, [0.5, 0.1, 0.3])
    assert report["img_per_s"] == {"hw2": {"train": 200.0, "step": 400.0, "eval": 2000.0},
                                   "reference": {"train": 50.0, "step": 100.0, "eval": 20.0}}
    assert report["img_per_s_windows"] == samples and report["fold_batchnorm_seconds"] == 0.3
    assert report["ratios"] == {"hw2_train_end_to_end_over_step": 0.5, "train_hw2_over_reference": 4.0,
                                "eval_hw2_over_reference": 100.0}
    forward = report["mflop_per_image"]["forward"] * 1e6
    assert report["gflop_per_s"]["hw2_train"] == pytest.approx(200 * 3 * forward / 1e9)
    assert report["gflop_per_s"]["hw2_eval"] == pytest.approx(2000 * forward / 1e9)
    for task in ("train", "eval"):  # over the matmul rate of the dtype it ran in, float32 here
        assert report["share_of_matmul"][f"hw2_{task}"] == pytest.approx(
            report["gflop_per_s"][f"hw2_{task}"] / report["gflop_per_s"]["matmul_float32"])
    assert (report["model"], report["dtype"], report["data"]) == ("ResNet-8 (version 1, resnet_size 1)", "float32",
                                                                   "made up")
    assert (report["eval_images"], report["ref_eval_images"], report["windows"]) == (16, 4, 3)


@pytest.mark.slow
def test_batchnorm_is_folded_once_a_window_and_never_inside_the_evaluation_window(cifar_dir, monkeypatch, capsys):
    folds = []

    def counted(model):
        folds.append(model)
        return fold(model)

    def refused(model):
        raise AssertionError("evaluate folded inside the timed evaluation window")

    fold = bench.fold_batchnorm
    monkeypatch.setattr(bench, "fold_batchnorm", counted)
    monkeypatch.setattr(hw2.evaluate, "fold_batchnorm", refused)
    bench.main(TINY + ["--data_dir", str(cifar_dir)])
    assert len(folds) == 1 + 1 + 3, "once before the windows, then once in each warm-up and timed window"
    assert json.loads(capsys.readouterr().out)["img_per_s"]["hw2"]["eval"] > 0


def test_evaluate_takes_an_already_folded_network_and_refuses_one_in_training_mode():
    """What the benchmark's evaluation window relies on: evaluate(fold=False) runs the network it is given."""
    torch.manual_seed(0)
    model = ResNet(1, 1, first_num_filters=4)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (20, 3072)).astype(np.uint8), rng.integers(0, 10, 20)
    stats = ([120.0] * 3, [60.0] * 3)
    folded = evaluate(fold_batchnorm(model), x, y, stats, device="cpu", dtype="float32", fold=False)
    unfolded = evaluate(model, x, y, stats, device="cpu", dtype="float32")
    assert folded["loss"] == pytest.approx(unfolded["loss"], rel=1e-4)
    assert torch.equal(folded["predicted"], unfolded["predicted"])
    with pytest.raises(ValueError, match="evaluation mode"):
        evaluate(model, x, y, stats, device="cpu", fold=False)  # BatchNorm would use each batch's statistics


@pytest.mark.slow
def test_float16_trains_with_a_loss_scaler(cifar_dir, monkeypatch, capsys):
    scalers = []
    step = bench.train_step

    def recorded(*args, scaler=None, **kwargs):
        scalers.append(scaler)
        return step(*args, scaler=scaler, **kwargs)

    monkeypatch.setattr(bench, "train_step", recorded)
    bench.main(TINY + ["--windows", "1", "--warmup", "0", "--dtype", "float16", "--data_dir", str(cifar_dir)])
    report = json.loads(capsys.readouterr().out)
    assert report["dtype"] == "float16" and report["reference_dtype"] == "float32"
    hw2_steps = [s for s in scalers if s is not None]
    assert len(hw2_steps) == 2 and all(isinstance(s, torch.amp.GradScaler) for s in hw2_steps), "train and step"
    assert scalers.count(None) == 2, "the reference stays float32, unscaled"


def test_random_images_stand_in_when_there_is_no_cifar(tmp_path):
    x_train, y_train, x_test, y_test, data = bench.load(tmp_path, seed=0)
    assert x_train.shape == (50000, 3072) and x_test.shape == (10000, 3072) and x_train.dtype == "uint8"
    assert y_train.shape == (50000,) and 0 <= y_test.min() and y_test.max() <= 9
    assert data.startswith("random uint8")


@pytest.mark.parametrize("flags,message", [(["--windows", "0"], "--windows must be >= 1"),
                                           (["--device", "tpu"],
                                            "--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'tpu'"),
                                           (["--dtype", "float8"], "invalid choice: 'float8'")])
def test_bad_flags_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit) as exit:
        bench.main(TINY + flags)
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(TINY + ["--device", "cuda"])
    assert "no CUDA GPU" in capsys.readouterr().err

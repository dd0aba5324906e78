"""reports/depth/, the depth study: its README (table, sentences) is what benchmarks/depth_report.py makes of the
runs' files beside it, each run is the study's recipe at its depth, started by slurm/train.sbatch, and the
repository's README quotes its figures. The study itself, on a real SLURM, is tested in test_slurm.py."""
import json
import sys
from pathlib import Path

import pytest

from hw2.config import config_from
from hw2.modeldir import read_config, run_differences

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "reports" / "depth"
sys.path.insert(0, str(ROOT / "benchmarks"))
import depth_report  # noqa: E402

RUNS = sorted((p for p in REPORT.glob("resnet*") if p.is_dir()), key=lambda p: read_config(p)["resnet_size"])


def test_the_report_is_what_its_runs_files_give():
    assert (REPORT / "README.md").read_text() == depth_report.readme(REPORT)
    assert "depth.png" in (REPORT / "README.md").read_text() and (REPORT / "depth.png").stat().st_size > 10000


def test_the_study_has_resnet_8_14_and_20_under_one_recipe_one_seed_each():
    sizes = [read_config(run)["resnet_size"] for run in RUNS]
    assert sizes[:3] == [1, 2, 3] and sizes == sorted(set(sizes))
    for run in RUNS:
        saved = read_config(run)
        assert run.name == f"resnet{6 * saved['resnet_size'] + 2}"
        recipe = config_from("fast", resnet_version=1, resnet_size=saved["resnet_size"])
        assert run_differences(saved, recipe) == {}, run
        assert saved["seed"] == 0


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_each_run_finished_through_the_job_script_and_was_tested_both_ways(run):
    epochs = read_config(run)["epochs"]
    job = (run / depth_report.SLURM_OUT).read_text()
    assert "\r" not in job
    assert f"Epoch {epochs} Loss" in job and "Error" not in job
    tests = depth_report.measure(run)
    assert 0.5 < tests["test"] < tests["test_tta"] < 1
    machine = json.loads((REPORT / depth_report.MACHINE).read_text())
    assert f"on cpu in {machine['dtype']}" in (run / "log.txt").read_text()


def test_the_front_page_quotes_the_study():
    [paragraph] = [" ".join(p.split()) for p in (ROOT / "README.md").read_text().split("\n\n") if "reports/depth" in p]
    for m in map(depth_report.measure, RUNS):
        assert f"ResNet-{6 * m['n'] + 2} {100 * m['test_tta']:.2f}%" in paragraph, paragraph


def test_expected_times_follow_a_straight_line_through_the_runs():
    measured = [{"n": 1, "epoch_seconds": 10, "seconds": 100}, {"n": 3, "epoch_seconds": 30, "seconds": 300}]
    assert depth_report.expected(measured)[9] == pytest.approx((90, 900))
    assert sorted(depth_report.expected(measured)) == [2, 5, 7, 9, 18]


def test_the_job_output_loses_its_progress_bars_and_keeps_every_line_of_the_run():
    job = ("ResNet-8 (version 1, 78,042 parameters) on cpu in float32\n"
           "\rEpoch 1/16:   0%|          | 0/390 [00:00<?, ?it/s]\rEpoch 1/16:  99%|█████████▉| 386/390 [00:26<00:00, 1"
           "Epoch 1 Loss 1.8508 Duration 26.308 seconds.\n"
           "6.75it/s]\rEpoch 1/16: 100%|██████████| 390/390 [00:26<00:00, 16.82it/s]\r            \r\n"
           "\rEpoch 16/16: 100%|████\ufffdEpoch 16 Loss 0.9644 Duration 81.030 seconds.\n"
           "\rEpoch 1Epoch 11 Loss 1.0721 Duration 62.628 seconds.\n"
           "1/16:   0%|          | 0/390 [00:00<?, ?it/s]\r\n"
           "Trained 16 epochs in 14.0 minutes.\n"
           "\ufffd\ufffd████▉| 389/390 [01:20<00:00,  4.84it/s]\rEpoch 16/16: 100%|██████████| 390/390 [01:21<00:00,  "
           "4.86it/s]\r     \r\n")
    assert depth_report.without_progress_bars(job) == (
        "ResNet-8 (version 1, 78,042 parameters) on cpu in float32\n"
        "Epoch 1 Loss 1.8508 Duration 26.308 seconds.\n"
        "Epoch 16 Loss 0.9644 Duration 81.030 seconds.\n"
        "Epoch 11 Loss 1.0721 Duration 62.628 seconds.\n"
        "Trained 16 epochs in 14.0 minutes.\n")
    assert depth_report.without_progress_bars("a\n\nb\n") == "a\n\nb\n"

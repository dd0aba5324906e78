"""slurm/train.sbatch on a real SLURM: a one-node cluster of this machine started by slurm/local_cluster.py
(munged, slurmctld and slurmd with their own key, configuration, state and logs in a temporary folder, stopped by
their PIDs afterwards), to which the tests submit the script as a user would, with sbatch, from the checkout.

Each job trains the tests' small run (conftest's TEST_RUN) on the synthetic CIFAR-10, on the device the script
chooses. The node has the machine's cores; jobs ask for one core a task. It also has two GPUs in name only
(device files that are not GPUs), so that a job asking for GPUs shows which device the script passes.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import as_flags, small_settings
from hw2.checkpoint import Checkpoint
from hw2.modeldir import read_tests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "slurm"))
import local_cluster  # noqa: E402  (slurm/local_cluster.py: a script beside the job script, not a package)

SCRIPT = "slurm/train.sbatch"
ENDED = local_cluster.ENDED
ONE_CORE = ["--cpus-per-task=1"]  # the script's default (4) is more than a CI machine has

pytestmark = pytest.mark.slow


class Cluster(local_cluster.Cluster):
    def sbatch(self, options, flags):
        """Submit the job script from the checkout, as a user does -> the job's id."""
        return super().sbatch(options, SCRIPT, flags)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = local_cluster.missing_programs()
    if missing:
        reason = f"SLURM is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; .ci/run installs them")
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("slurmd launches jobs as root here (SlurmdUser=root); run the SLURM tests as root, as CI does")
    if not (ROOT / ".venv" / "bin" / "activate").exists():
        pytest.skip("the job script activates the checkout's .venv, which this checkout lacks")

    folder = tmp_path_factory.mktemp("slurm")
    try:
        local_cluster.start(folder, gpus=2, cwd=ROOT)
        yield Cluster(folder, cwd=ROOT)
    finally:
        local_cluster.stop(folder)  # no job and no daemon may outlive the tests


def output(record):
    """What the job printed so far ('' before it starts)."""
    path = Path(record["StdOut"])
    return path.read_text(errors="replace") if path.exists() else ""  # the progress bar can cut a character


def job_flags(cifar_dir, modeldir, **overrides):
    """The train flags of the tests' small run, without --device: the script chooses it."""
    settings = small_settings(cifar_dir, modeldir, **overrides)
    del settings["device"]
    return as_flags(settings)


# Two processes of one image each: 80 steps an epoch, as the processes compare stop requests every 50 steps
# (hw2.train.CHECK_EVERY), so that a signal in the second epoch stops them inside it.
TWO_TASKS = {"batch_size": 2, "epochs": 3, "save_interval": 1}


@pytest.fixture(scope="module")
def two_task_run(cluster, cifar_dir, tmp_path_factory):
    """A job of two tasks on one node, run to its end -> (its modeldir, its job record)."""
    folder = tmp_path_factory.mktemp("two_tasks")
    flags = job_flags(cifar_dir, folder / "run", **TWO_TASKS)
    [record] = cluster.wait(cluster.sbatch(["--ntasks-per-node=2", *ONE_CORE, f"--output={folder}/slurm-%j.out"],
                                           flags))
    return folder / "run", record


def test_a_two_task_job_trains_data_parallel_into_one_run(two_task_run):
    run, record = two_task_run
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), output(record)

    # one run, written once: the metrics and the checkpoints of rank 0 alone, which knew it had a partner
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json", "log.txt", "metrics.csv", "model-1.ckpt", "model-2.ckpt", "model-3.ckpt", "model-best.ckpt",
        "resolved.json"]
    resolved = json.loads((run / "resolved.json").read_text())
    assert (resolved["processes"], resolved["device"]) == (2, "cpu")
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 3  # a header, then each epoch once
    assert output(record).count("Epoch 3 Loss") == 1  # rank 0 alone reports


def test_an_array_trains_one_seed_per_task_each_into_its_own_modeldir(cluster, cifar_dir, tmp_path):
    flags = job_flags(cifar_dir, tmp_path / "run", epochs=1)
    job = cluster.sbatch(["--array=0-1%1", *ONE_CORE, f"--output={tmp_path}/slurm-%A_%a.out"], flags)
    records = cluster.wait(job)
    assert [(r["JobState"], r["ExitCode"]) for r in records] == [("COMPLETED", "0:0")] * 2, \
        "\n".join(map(output, records))

    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["run_seed0", "run_seed1"]
    for seed in (0, 1):
        config = (tmp_path / f"run_seed{seed}" / "config.json").read_text()
        assert f'"seed": {seed},' in config
        assert (tmp_path / f"run_seed{seed}" / "model-1.ckpt").exists()


def stop_and_submit_again(cluster, options, flags, modeldir, epochs):
    """Submit a job, send it SIGTERM once its first checkpoint is written, check that it stopped with a checkpoint
    of its own, and submit the same command again, which must finish the run."""
    job = cluster.sbatch(options, flags)
    deadline = time.monotonic() + 60
    while not (modeldir / "model-1.ckpt").exists():
        [record] = cluster.jobs(job)
        assert record["JobState"] not in ENDED, output(record)
        assert time.monotonic() < deadline, f"no first checkpoint yet\n{output(record)}"
        time.sleep(0.2)
    cluster.command("scancel", "--signal=TERM", job)  # as --signal=TERM@... sends it before the time limit
    [record] = cluster.wait(job)
    assert record["ExitCode"] == f"{128 + signal.SIGTERM}:0", output(record)
    assert "Run it again with --resume" in output(record)
    [step_checkpoint] = modeldir.glob("model-*-step*.ckpt")
    assert not (modeldir / f"model-{epochs}.ckpt").exists(), "the signal came after the run had ended"

    [again] = cluster.wait(cluster.sbatch(options, flags))  # the same command
    assert (again["JobState"], again["ExitCode"]) == ("COMPLETED", "0:0"), output(again)
    assert f"Resuming from {step_checkpoint}" in output(again)


def same_weights(path, other):
    ours, theirs = Checkpoint.load(path).model, Checkpoint.load(other).model
    return ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_a_stopped_job_submitted_again_ends_as_an_unstopped_one(cluster, cifar_dir, tmp_path):
    """SIGTERM stops the run with a checkpoint; the same command again continues it, and the weights end
    bit-identical to those of a run never stopped."""
    settings = dict(epochs=12, save_interval=1)
    options = [*ONE_CORE, f"--output={tmp_path}/slurm-%j.out"]
    unstopped = cluster.sbatch(options, job_flags(cifar_dir, tmp_path / "unstopped", **settings))
    stop_and_submit_again(cluster, options, job_flags(cifar_dir, tmp_path / "stopped", **settings),
                          tmp_path / "stopped", settings["epochs"])
    [record] = cluster.wait(unstopped)
    assert record["ExitCode"] == "0:0", output(record)
    assert same_weights(tmp_path / "stopped" / "model-12.ckpt", tmp_path / "unstopped" / "model-12.ckpt")


def test_a_signal_stops_every_task_of_a_job_at_the_same_step(cluster, cifar_dir, tmp_path, two_task_run):
    """SLURM signals each task, the tasks agree on a step, rank 0 writes the checkpoint; the job submitted again
    ends with the weights of the two-task run that was never stopped."""
    options = ["--ntasks-per-node=2", *ONE_CORE, f"--output={tmp_path}/slurm-%j.out"]
    stop_and_submit_again(cluster, options, job_flags(cifar_dir, tmp_path / "run", **TWO_TASKS),
                          tmp_path / "run", TWO_TASKS["epochs"])
    assert same_weights(tmp_path / "run" / "model-3.ckpt", two_task_run[0] / "model-3.ckpt")


def test_a_job_with_gpus_trains_on_cuda(cluster, cifar_dir, tmp_path):
    """The node's GPUs are not real ones, so hw2 finds no CUDA GPU: its error names the device that the script
    chose."""
    flags = job_flags(cifar_dir, tmp_path / "run", epochs=1)
    job = cluster.sbatch(["--gpus-per-task=1", *ONE_CORE, f"--output={tmp_path}/slurm-%j.out"], flags)
    [record] = cluster.wait(job)
    assert "--device cuda was asked for but torch sees no CUDA GPU" in output(record)


def test_the_local_cluster_will_not_start_over_a_folder_in_use(cluster):
    """Starting a second cluster in the folder of a running one would overwrite its key and configuration."""
    run = subprocess.run([sys.executable, "slurm/local_cluster.py", "start", str(cluster.folder)], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 1
    assert run.stderr.strip() == (f"{cluster.folder} is not empty: give a new folder (or stop the cluster in it and "
                                  "remove it)")
    assert cluster.command("sinfo", "--noheader", "--Node", "--format=%t").strip() in {"idle", "mixed", "alloc"}


def test_the_depth_study_trains_and_tests_each_depth_in_turn_and_reports_them(cluster, cifar_dir, tmp_path):
    """benchmarks/depth_study.sh submits a training job and then a test job per depth, each after the one before;
    benchmarks/depth_report.py makes the report from the runs they leave."""
    runs = tmp_path / "runs"
    # 4 epochs, so that the recipe's last is at 32x32, whose seconds the report gives
    flags = f"--data_dir {cifar_dir} --train_subset 40 --batch_size 20 --first_num_filters 8 --epochs 4"
    env = {**cluster.env, "PATH": f"{Path(cluster.paths['sbatch']).parent}:{cluster.env['PATH']}",
           "RUNS": str(runs), "CPUS": "1", "FLAGS": flags}
    submitted = subprocess.run(["bash", "benchmarks/depth_study.sh", "1", "2"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    jobs = re.findall(r"job (\d+)", submitted.stdout)
    assert len(jobs) == 4, submitted.stdout
    records = [record for job in jobs for record in cluster.wait(job)]
    assert [(r["JobState"], r["ExitCode"]) for r in records] == [("COMPLETED", "0:0")] * 4, \
        "\n".join(map(output, records))
    # one job at a time: each started once the one before it had ended
    by_start = sorted(records, key=lambda r: r["StartTime"])
    assert all(a["EndTime"] <= b["StartTime"] for a, b in zip(by_start, by_start[1:]))

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import depth_report
    depth_report.main(runs, tmp_path / "report")
    text = (tmp_path / "report" / "README.md").read_text()
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines() if line.startswith("| ResNet-")}
    assert list(rows) == ["ResNet-8", "ResNet-14", "ResNet-20", "ResNet-32", "ResNet-44", "ResNet-56", "ResNet-110"]
    for name in ("ResNet-8", "ResNet-14"):
        tests = read_tests(tmp_path / "report" / name.lower().replace("-", ""))
        assert {row["tta"] for row in tests} == {"True", "False"}
        assert rows[name][5] == f"{100 * float(next(r for r in tests if r['tta'] == 'False')['accuracy']):.2f}%"
    assert all(rows[name][4].startswith("not run: ") for name in list(rows)[2:])
    slurm_out = (tmp_path / "report" / "resnet8" / "slurm.out").read_text()
    assert "Epoch 4 Loss" in slurm_out and "\r" not in slurm_out
    assert (tmp_path / "report" / "depth.png").stat().st_size > 10000

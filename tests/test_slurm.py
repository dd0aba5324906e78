"""slurm/train.sbatch on a real SLURM: a one-node cluster of this machine (munged, slurmctld and slurmd with
their own key, configuration, state and logs in a temporary folder, stopped by PID afterwards), to which the tests
submit the script as a user would, with sbatch, from the checkout.

Each job trains the tests' small run (conftest's TEST_RUN) on the synthetic CIFAR-10, on the device the script
chooses. The node has the machine's cores; jobs ask for one core a task. It also has two GPUs in name only
(device files that are not GPUs), so that a job asking for GPUs shows which device the script passes.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import as_flags, small_settings
from hw2.checkpoint import Checkpoint

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "slurm/train.sbatch"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "sinfo")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE"}
ONE_CORE = ["--cpus-per-task=1"]  # the script's default (4) is more than a CI machine has

pytestmark = pytest.mark.slow


def programs():
    """Each daemon's and client's path (the daemons are in /usr/sbin, which a user's PATH may leave out)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return {name: shutil.which(name, path=path) for name in DAEMONS + CLIENTS}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(folder, node):
    """One node, this machine (`node`), with all its cores; jobs requeue; nothing is accounted."""
    return f"""\
ClusterName=hw2test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/run/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/run/slurmctld.pid
SlurmdPidFile={folder}/run/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=5
JobRequeue=1
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """The running cluster: `env` is the environment its client commands need (SLURM_CONF)."""

    def __init__(self, folder, paths):
        self.folder, self.paths = folder, paths
        self.env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "OMP_NUM_THREADS": "1"}

    def command(self, name, *args):
        run = subprocess.run([self.paths[name], *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
                             timeout=30)
        assert run.returncode == 0, f"{name} {' '.join(args)}: {run.stdout}{run.stderr}"
        return run.stdout

    def sbatch(self, options, flags):
        """Submit the script from the checkout, as a user does -> the job's id."""
        return self.command("sbatch", "--parsable", *options, SCRIPT, *flags).strip().split(";")[0]

    def jobs(self, job):
        """{field: value} of the job, one for each task of an array."""
        lines = self.command("scontrol", "show", "job", "--oneliner", job).splitlines()
        return [dict(word.split("=", 1) for word in line.split() if "=" in word) for line in lines if line]

    def wait(self, job, timeout=120):
        """Wait until the job (each task of an array) has ended -> its records."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.jobs(job)
            if all(r["JobState"] in ENDED for r in records):
                return records
            assert time.monotonic() < deadline, f"job {job} still {[r['JobState'] for r in records]}"
            time.sleep(0.5)


def start(argv, log, env):
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    paths = programs()
    missing = [name for name, path in paths.items() if path is None]
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
    for name in ("run", "state", "spool", "log", "munge"):
        (folder / name).mkdir()
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    (folder / "slurm.conf").write_text(slurm_conf(folder, node))
    # two GPUs in name: SLURM wants a device file for each, and tells the jobs their indices (0 and 1)
    (folder / "gres.conf").write_text("".join(f"NodeName={node} Name=gpu File={device}\n"
                                              for device in ("/dev/null", "/dev/zero")))
    cluster = Cluster(folder, paths)

    processes = []
    with open(folder / "log" / "daemons.out", "w") as log:
        try:
            # --force: munged refuses sockets under folders that not everyone may enter, as temporary ones are
            processes.append(start([paths["munged"], "--foreground", "--force", f"--key-file={key}",
                                    f"--socket={folder}/run/munge.socket", f"--pid-file={folder}/run/munged.pid",
                                    f"--log-file={folder}/log/munged.log", f"--seed-file={folder}/munge/seed"],
                                   log, cluster.env))
            wait_for(lambda: (folder / "run" / "munge.socket").exists(), "munged's socket", folder)
            processes.append(start([paths["slurmctld"], "-D"], log, cluster.env))
            processes.append(start([paths["slurmd"], "-D", "-N", node], log, cluster.env))
            wait_for(lambda: cluster.command("sinfo", "--noheader", "--Node", "--format=%t").strip() == "idle",
                     "the node to be idle", folder)
            yield cluster
        finally:
            # no job may outlive the cluster: their slurmstepd processes are not children of this test
            if processes[-1:] and processes[-1].poll() is None:
                subprocess.run([paths["scancel"], "--user=root"], env=cluster.env, capture_output=True, timeout=30)
                deadline = time.monotonic() + 30
                while any(state not in ENDED for state in job_states(cluster)) and time.monotonic() < deadline:
                    time.sleep(0.5)
            for process in reversed(processes):
                stop(process)


def job_states(cluster):
    run = subprocess.run([cluster.paths["scontrol"], "show", "jobs", "--oneliner"], env=cluster.env,
                         capture_output=True, text=True, timeout=30)
    return [word.split("=", 1)[1] for line in run.stdout.splitlines() for word in line.split()
            if word.startswith("JobState=")]


def wait_for(ready, what, folder, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except AssertionError:  # a client before its daemon is up
            pass
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((folder / "log").iterdir()))
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.5)


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

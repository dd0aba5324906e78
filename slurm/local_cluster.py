"""A one-node SLURM cluster on this machine, to try slurm/train.sbatch where there is no cluster: munged,
slurmctld and slurmd with their own key, configuration, state and logs in one folder, stopped by their PIDs.
It needs root (slurmd starts the jobs as root here) and Debian's `slurm-wlm` and `munge` packages:

    apt-get install slurm-wlm munge
    python slurm/local_cluster.py start /tmp/cluster      # prints the SLURM_CONF to export
    export SLURM_CONF=/tmp/cluster/slurm.conf
    sbatch --cpus-per-task=2 slurm/train.sbatch --recipe smoke --modeldir runs/smoke
    python slurm/local_cluster.py stop /tmp/cluster       # cancels the jobs left, then stops the daemons

The node has the machine's cores and, with --gpus N, N GPUs in name only (device files that are not GPUs), so
that a job asking for GPUs shows which device the script passes. No plugins beyond the simplest: processes are
tracked by their parent (proctrack/linuxproc), not confined (task/none), nothing is accounted.
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "sinfo")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE"}


def programs():
    """Each daemon's and client's path (the daemons are in /usr/sbin, which a user's PATH may leave out)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return {name: shutil.which(name, path=path) for name in DAEMONS + CLIENTS}


def missing_programs():
    return [name for name, path in programs().items() if path is None]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(folder, node, gpus):
    """One node, this machine (`node`), with all its cores; jobs requeue; nothing is accounted."""
    return f"""\
ClusterName=hw2local
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
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()}{f' Gres=gpu:{gpus}' if gpus else ''} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """A cluster whose configuration is in `folder`: `env` is the environment its client commands need
    (SLURM_CONF), `cwd` the folder they run in (where sbatch's jobs start)."""

    def __init__(self, folder, cwd="."):
        self.folder, self.cwd, self.paths = Path(folder), cwd, programs()
        self.env = {**os.environ, "SLURM_CONF": str(self.folder / "slurm.conf"), "OMP_NUM_THREADS": "1"}

    def command(self, name, *args):
        run = subprocess.run([self.paths[name], *args], env=self.env, cwd=self.cwd, capture_output=True, text=True,
                             timeout=30)
        if run.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(args)}: {run.stdout}{run.stderr}")
        return run.stdout

    def sbatch(self, options, script, flags=()):
        """Submit a job script as a user does -> the job's id."""
        return self.command("sbatch", "--parsable", *options, script, *flags).strip().split(";")[0]

    def jobs(self, job=None):
        """{field: value} of the job (each task of an array), or of every job the controller knows."""
        lines = self.command("scontrol", "show", "job", "--oneliner", *([job] if job else [])).splitlines()
        return [dict(word.split("=", 1) for word in line.split() if "=" in word) for line in lines
                if line.startswith("JobId=")]

    def wait(self, job, timeout=120):
        """Wait until the job (each task of an array) has ended -> its records."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.jobs(job)
            if all(r["JobState"] in ENDED for r in records):
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} still {[r['JobState'] for r in records]}")
            time.sleep(0.5)

    def wait_for(self, ready, what, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except RuntimeError:  # a client before its daemon is up
                pass
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}"
                                 for p in sorted((self.folder / "log").iterdir()))
                raise TimeoutError(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.5)


def start(folder, gpus=0, cwd="."):
    """Write the cluster's files into `folder` (a new or empty folder), start its daemons in sessions of their
    own (they outlive this process) and wait until its node is idle -> the Cluster."""
    folder = Path(folder).resolve()
    for name in ("run", "state", "spool", "log", "munge"):
        (folder / name).mkdir(parents=True)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    (folder / "slurm.conf").write_text(slurm_conf(folder, node, gpus))
    # SLURM wants a device file for each GPU, and tells the jobs their indices
    (folder / "gres.conf").write_text("".join(f"NodeName={node} Name=gpu File={device}\n"
                                              for device in ("/dev/null", "/dev/zero", "/dev/full")[:gpus]))
    cluster = Cluster(folder, cwd)
    paths = cluster.paths
    with open(folder / "log" / "daemons.out", "a") as log:
        def launch(argv):
            subprocess.Popen(argv, env=cluster.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        # --force: munged refuses sockets under folders that not everyone may enter, as temporary ones are
        launch([paths["munged"], "--force", f"--key-file={key}", f"--socket={folder}/run/munge.socket",
                f"--pid-file={folder}/run/munged.pid", f"--log-file={folder}/log/munged.log",
                f"--seed-file={folder}/munge/seed"])
        cluster.wait_for(lambda: (folder / "run" / "munge.socket").exists(), "munged's socket")
        launch([paths["slurmctld"]])
        launch([paths["slurmd"], "-N", node])
        cluster.wait_for(lambda: cluster.command("sinfo", "--noheader", "--Node", "--format=%t").strip() == "idle",
                         "the node to be idle")
    return cluster


def stop(folder):
    """Cancel the cluster's jobs and wait for them to end (their processes are not the daemons' children), then
    stop its daemons by the PIDs in their files."""
    cluster = Cluster(folder)
    try:
        cluster.command("scancel", "--user", str(os.getuid()))
        deadline = time.monotonic() + 30
        while any(r["JobState"] not in ENDED for r in cluster.jobs()) and time.monotonic() < deadline:
            time.sleep(0.5)
    except RuntimeError:  # the controller is not running
        pass
    for name in ("slurmd", "slurmctld", "munged"):
        pid_file = cluster.folder / "run" / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("folder", help="the cluster's folder: its configuration, state and logs")
    parser.add_argument("--gpus", type=int, default=0, choices=range(4), help="GPUs in name only (0-3)")
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop(args.folder)
        return
    missing = missing_programs()
    if missing:
        sys.exit(f"SLURM is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        sys.exit("the local cluster runs its jobs as root (SlurmdUser=root): start it as root")
    if Path(args.folder).exists() and any(Path(args.folder).iterdir()):
        sys.exit(f"{args.folder} is not empty: give a new folder (or stop the cluster in it and remove it)")
    cluster = start(args.folder, args.gpus)
    print(f"A one-node SLURM cluster runs; for its commands:\nexport SLURM_CONF={cluster.folder / 'slurm.conf'}")


if __name__ == "__main__":
    main()

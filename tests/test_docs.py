"""What README.md and docs/ tell a user: every command they show runs (train commands on a few images of a
tiny network, so that each takes seconds), each command of docs/reproducing.md trains the config.json its
report keeps, and the pages a user reads speak of the product alone."""
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hw2.cli import build_parser
from hw2.config import FIELDS, config_from
from test_import import write_published

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *(DOCS / name for name in ("install.md", "cli.md", "notebooks.md", "timing.md",
                                                      "reproducing.md", "tools.md", "slurm.md",
                                                      "developing.md"))]

# Commands shown but not run here, each with the reason.
NOT_RUN = {
    "python3 -m venv": "installing: .ci/run makes a fresh virtual environment",
    "py -m venv": "installing on Windows: as python3 -m venv",
    ". .venv/bin/activate": "installing: .ci/run activates its virtual environment",
    "source .venv/bin/activate": "installing on macOS: as . .venv/bin/activate",
    ".venv\\Scripts\\Activate.ps1": "installing on Windows: as . .venv/bin/activate",
    "pip install": "installing: .ci/run installs requirements.txt, requirements-test.txt and hw2 this way",
    "git clone": "Colab's checkout",
    "%cd": "Colab's checkout",
    "apt-get install": ".ci/run installs chromium, chromium-driver, slurm-wlm and munge",
    "python -m pytest": "the tests themselves",
    "jupyter lab": "tests/test_jupyterlab.py drives JupyterLab in a browser",
    "torchrun": "tests/test_distributed.py trains under torchrun",
    "tensorboard --logdir": "a server to look at: tests/test_tensorboard.py reads the event files it would show",
    "sbatch": "needs a SLURM cluster: tests/test_slurm.py submits the job script to one it starts",
    "bash benchmarks/": "hours of training, a SLURM cluster or a GPU: tests/test_slurm.py runs a small depth study",
    "RECIPE=": "a depth study on a SLURM cluster: tests/test_slurm.py runs a small one",
    "python benchmarks/depth_report.py": "needs a depth study's runs: tests/test_slurm.py reports a small one",
    "python slurm/local_cluster.py": "starts SLURM's daemons as root: tests/test_slurm.py starts the same cluster",
    "export SLURM_CONF": "the local cluster's settings, for sbatch: tests/test_slurm.py sets them",
    "python ../shared/": "the offline data of the development machines (docs/developing.md)",
}
# A tiny network on a few images: appended to what a train command asks for, the later flags winning.
TINY = {"train_subset": 40, "valid_size": 20, "batch_size": 20, "resnet_size": 1, "first_num_filters": 8,
        "device": "cpu"}
TINY_FLAGS = [f for name, value in TINY.items() for f in (f"--{name}", str(value))]
TINY_DATA = TINY_FLAGS[:6] + TINY_FLAGS[-2:]  # train_subset, valid_size, batch_size, device
TINY_PARAMETERS = [f for name, value in TINY.items() for f in ("-p", name, str(value))]
TINY_BENCH = ["--resnet_size", "1", "--batch_size", "8", "--steps", "1", "--eval_images", "16",
              "--ref_eval_images", "4", "--windows", "1", "--warmup", "0"]
PLACEHOLDER = re.compile(r"\b[A-Z]{2,}\b|\.\.\.")  # runs/NAME, --modeldir DIR, train ...: a pattern, not a command


def shown_commands(page):
    """The commands `page` shows, in order, each once: each line of its bash and powershell blocks, each `$ ` line
    of its plain blocks (the rest is output), and each inline code span that starts with python -m or papermill,
    has arguments and holds no placeholder. Comments and Colab's `!` are cut."""
    commands, block = [], None
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            block = line.strip()[3:] if block is None else None
            continue
        if block in ("bash", "powershell") or (block == "" and line.startswith("$ ")):
            command = line.removeprefix("$ ").removeprefix("!").split("  #")[0].split(" # ")[0].strip()
            if command:
                commands.append(command)
        elif block is None:  # `python -m hw2 runs` alone names the command: not one to run
            commands += [span for span in re.findall(r"`((?:python -m|papermill) [^`]+)`", line)
                         if not PLACEHOLDER.search(span) and not re.fullmatch(r"python -m hw2(?: \w+)?", span)]
    return list(dict.fromkeys(commands))  # a command a page repeats is the same run, run once


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def reason_not_run(command):
    return next((reason for prefix, reason in NOT_RUN.items() if command.startswith(prefix)), None)


def runnable(command):
    return command.startswith(("python -m hw2", "papermill ", "jupyter nbconvert ", "python docs/"))


def test_every_command_shown_is_run_or_has_a_reason_not_to_be():
    unknown = [c for page in PAGES for c in shown_commands(page) if not runnable(c) and not reason_not_run(c)]
    assert not unknown, f"commands the docs show that tests/test_docs.py neither runs nor exempts: {unknown}"


def shortened(command, page, folder):
    """The argv that runs `command` in `folder`: train on TINY (and, from reproducing.md, for two epochs, one more
    than the recipes' warm-up), the benchmark on a few images, notebook 03 on TINY; globs expanded as a shell
    would."""
    argv = [a for word in shlex.split(command)
            for a in (sorted(str(p.relative_to(folder)) for p in folder.glob(word)) if "*" in word else [word])]
    if argv[:3] == ["python", "-m", "hw2"] and argv[3:4] == ["train"]:
        tiny = TINY_DATA if "--resume" in argv else TINY_FLAGS  # a resumed run keeps its network
        argv += tiny + (["--epochs", "2"] if page.name == "reproducing.md" else [])
    elif argv[:3] == ["python", "-m", "hw2.bench"]:
        argv += TINY_BENCH
    elif argv[0] == "papermill" and argv[1] == "notebooks/03_train.ipynb":
        argv += TINY_PARAMETERS
    program = {"python": [sys.executable], "papermill": [sys.executable, "-m", "papermill"],
               "jupyter": [sys.executable, "-m", "jupyter"]}[argv[0]]
    return program + argv[1:]


def user_folder(folder, cifar_dir, cifar100_dir):
    """A copy of the checkout in `folder` as a user has it, with the small synthetic CIFAR-10 and CIFAR-100 in its
    data/, and the pictures and the published checkpoint the docs name."""
    shutil.copytree(ROOT, folder, ignore=shutil.ignore_patterns(".git", ".venv", "data", "runs", "model_v*",
                                                               "__pycache__", "*.egg-info", ".ipynb_checkpoints"))
    (folder / "data").mkdir()
    for dataset in (*cifar_dir.iterdir(), *cifar100_dir.iterdir()):
        (folder / "data" / dataset.name).symlink_to(dataset)
    (folder / "photos").mkdir()
    for path in ("photo.jpg", "cat.jpg", "photos/red.png"):
        Image.new("RGB", (48, 40), (200, 30, 30)).save(folder / path)
    (folder / "runs").mkdir()
    write_published(folder / "runs" / "resnet20-12fca82f.th", 3)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_command_of_the_readme_and_docs_runs(page, tmp_path, cifar_dir, cifar100_dir):
    """Each page's commands in order, in a copy of the checkout of its own (a page may train the run another
    page trains)."""
    folder = user_folder(tmp_path / "hw2", cifar_dir, cifar100_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for command in [c for c in shown_commands(page) if runnable(c)]:
        run = subprocess.run(shortened(command, page, folder), cwd=folder, capture_output=True, text=True, env=env,
                             timeout=600)
        assert run.returncode == 0, f"{page.name}: {command}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    for source in python_blocks(page):
        run = subprocess.run([sys.executable, "-c", source], cwd=folder, capture_output=True, text=True, env=env,
                             timeout=600)
        assert run.returncode == 0, f"{page.name}: {source}\n{run.stderr[-2000:]}"


# Where a run's config.json may differ from the command that reproduces it: paths, the machine, continuing.
NOT_THE_RECIPE = {"modeldir", "data_dir", "device", "dtype", "resume", "save_interval", "num_classes"}


def test_each_reproducing_command_trains_its_reports_config():
    page = (DOCS / "reproducing.md").read_text()
    rows = re.findall(r"^\| \[`(\w+)`\]\(\.\./reports/\1/\) \| `(python -m hw2 train [^`]+)` \|$", page, re.M)
    assert {name for name, _ in rows} == {p.parent.name for p in (ROOT / "reports").glob("*/results.json")} | {
        p.parent.name for p in (ROOT / "reports").glob("*/config.json")}, "a report without its command, or gone"
    for name, command in rows:
        args = build_parser().parse_args(shlex.split(command)[3:])
        config = config_from(args.recipe, **{f: getattr(args, f) for f in FIELDS if hasattr(args, f)})
        [saved] = sorted((ROOT / "reports" / name).glob("config.json")) or sorted(
            (ROOT / "reports" / name).glob("*_seed0/config.json"))
        saved = json.loads(saved.read_text())
        asked = dataclasses.asdict(config)
        differs = {f: (asked[f], saved[f]) for f in saved if f in asked and f not in NOT_THE_RECIPE
                   and asked[f] != saved[f]}
        assert not differs, f"{name}: {command} trains {differs} (asked, report's config.json)"


WORKSHOP = re.compile(r"[Ii]ssue [0-9]|this project's|\.\./shared|(?:this|last|next|earlier|later|previous) session")


def test_what_users_read_speaks_of_the_product_alone():
    """README.md, docs/ (the page on developing hw2 aside), reports/, the notebooks and hw2/: no issue numbers, no
    sessions of the work, no paths outside the repository."""
    files = [ROOT / "README.md", *(p for folder in ("docs", "reports", "notebooks", "hw2")
                                   for p in sorted((ROOT / folder).rglob("*"))
                                   if p.suffix in (".md", ".py", ".ipynb", ".html", ".txt", ".json"))]
    hits = [f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}" for path in files
            if path != DOCS / "developing.md"
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if WORKSHOP.search(line)]
    assert not hits, "\n".join(hits)


def test_the_timing_page_holds_the_benchmarks_tables():
    spec = importlib.util.spec_from_file_location("timing", ROOT / "benchmarks" / "timing.py")
    timing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timing)
    page = (DOCS / "timing.md").read_text()
    assert timing.estimate_rows() in page and timing.measured_rows() in page, "run python benchmarks/timing.py"

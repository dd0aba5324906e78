"""`pytest --nbval` checks the notebooks, and only them: 01, 02 and 05 against their committed outputs, 03
and 04, whose defaults train for hours, as tests/notebooks/ holds them (papermill's run of them on a small
training run, tests/test_notebooks.py's NBVAL_RUNS). Those two run in a scratch folder laid out as a project
(small_run_folder), so that their modeldir starts empty on every run and nothing is written into the checkout.
It works the same at the repository's root, on `pytest --nbval notebooks/` and on one notebook, e.g.
`pytest --nbval notebooks/04_evaluate.ipynb`: 04 without 03 first trains the small run that 03 would have.
"""
import dataclasses
import shutil
import tempfile
from pathlib import Path

import pytest
from py.path import local

try:
    from nbval.plugin import IPyNbFile
except ImportError:  # nbval (requirements-test.txt) gives pytest its --nbval; without it nothing here is used
    IPyNbFile = pytest.File

ROOT = Path(__file__).resolve().parent
NOTEBOOKS, GOLDEN = ROOT / "notebooks", ROOT / "tests" / "notebooks"


def small_run_folder(folder):
    """Lay `folder` out for 03 and 04's small run: the checkout's data/, reports/r20_he/ (03's worked example)
    and notebooks/sample.png (04's picture) linked in, and an empty reports/ otherwise; `folder` -> folder as a
    Path."""
    folder = Path(folder)
    (folder / "data").symlink_to(ROOT / "data")
    (folder / "notebooks").mkdir()
    (folder / "notebooks" / "sample.png").symlink_to(NOTEBOOKS / "sample.png")
    (folder / "reports").mkdir()
    (folder / "reports" / "r20_he").symlink_to(ROOT / "reports" / "r20_he")
    return folder


def small_run_config(folder):
    """The Config that 03's copy in tests/notebooks/ trains (its parameters cell, then papermill's injected
    one), its data_dir and modeldir in `folder`."""
    import nbformat

    from hw2.notebook import cell_config
    namespace = {}
    for cell in nbformat.read(GOLDEN / "03_train.ipynb", as_version=4).cells:
        if {"parameters", "injected-parameters"} & set(cell.metadata.get("tags", [])):
            exec(cell.source, namespace)
    config = cell_config(namespace)
    return dataclasses.replace(config, data_dir=str(folder / config.data_dir), modeldir=str(folder / config.modeldir))


def pytest_configure(config):
    if getattr(config.option, "nbval", False):
        # the small run's test accuracies depend on the processor (sanitize.cfg); the kernel is this Python's
        config.option.nbval_sanitize_with = config.option.nbval_sanitize_with or str(GOLDEN / "sanitize.cfg")
        config.option.nbval_current_env = not config.option.nbval_kernel_name


def pytest_ignore_collect(collection_path, config):
    """With --nbval: not the Python tests, and not tests/notebooks/ itself (collected as notebooks/03 and 04)."""
    if getattr(config.option, "nbval", False):
        return collection_path.suffix == ".py" or collection_path == GOLDEN or None
    return None


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path, parent):
    collected = yield
    golden = GOLDEN / file_path.name
    if not (getattr(parent.config.option, "nbval", False) and file_path.parent == NOTEBOOKS and golden.exists()):
        return collected
    if not hasattr(parent.config, "hw2_small_run"):
        parent.config.hw2_small_run = small_run_folder(tempfile.mkdtemp(prefix="hw2-nbval-"))
        parent.config.add_cleanup(lambda: shutil.rmtree(parent.config.hw2_small_run, ignore_errors=True))
    shutil.copy(golden, parent.config.hw2_small_run)
    return [SmallRunNotebook.from_parent(parent, path=file_path)]


class SmallRunNotebook(IPyNbFile):
    """nbval's collector for notebooks/03 and 04: it runs their copy in the scratch folder, under the notebook's
    own path, which is what pytest matches a path typed on its command line against."""

    @property
    def fspath(self):  # the file nbval reads, in the folder it starts the kernel in
        return local(self.config.hw2_small_run / self.path.name)

    def setup(self):
        if self.path.name == "04_evaluate.ipynb":
            run = small_run_config(self.config.hw2_small_run)
            if not list(Path(run.modeldir).glob("*.ckpt")):  # 04 alone: train what 03 would have
                from hw2.train import train
                train(run)
        super().setup()

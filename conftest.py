"""`pytest --nbval` checks the notebooks, and only them: 01, 02 and 05 against their committed outputs, 03
and 04, whose defaults train for hours, as tests/notebooks/ holds them (papermill's run of them on a small
training run, tests/test_notebooks.py's SMALL_RUN). Those two run in a scratch folder laid out as a project
(small_run_folder), so that their modeldir starts empty on every run and nothing is written into the checkout.
It works the same at the repository's root and on `pytest --nbval notebooks/`.
"""
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
NOTEBOOKS, GOLDEN = ROOT / "notebooks", ROOT / "tests" / "notebooks"


def small_run_folder(folder):
    """Lay `folder` out for 03 and 04's small run: the checkout's data/ and reports/r20_he/ (03's worked
    example) linked in, and an empty reports/ otherwise; `folder` -> folder as a Path."""
    folder = Path(folder)
    (folder / "data").symlink_to(ROOT / "data")
    (folder / "reports").mkdir()
    (folder / "reports" / "r20_he").symlink_to(ROOT / "reports" / "r20_he")
    return folder


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
    from nbval.plugin import IPyNbFile
    if not hasattr(parent.config, "hw2_small_run"):
        parent.config.hw2_small_run = small_run_folder(tempfile.mkdtemp(prefix="hw2-nbval-"))
        parent.config.add_cleanup(lambda: shutil.rmtree(parent.config.hw2_small_run, ignore_errors=True))
    copy = shutil.copy(golden, parent.config.hw2_small_run)
    return [IPyNbFile.from_parent(parent, path=Path(copy), nodeid=f"notebooks/{file_path.name}")]

"""The committed notebooks (their outputs are checked by nbval: see pyproject.toml): kernel python3, no
papermill error cells, and the training notebook's parameters cell is the config's defaults."""
import dataclasses
import json

import pytest

from hw2 import REPO_ROOT
from hw2.config import Config

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def load(path):
    return json.loads(path.read_text())


def tagged(notebook, tag):
    return [cell for cell in notebook["cells"] if tag in cell["metadata"].get("tags", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_committed_notebook_is_clean(path):
    notebook = load(path)
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    assert not tagged(notebook, "papermill-error-cell-tag")
    assert not [output for cell in notebook["cells"] for output in cell.get("outputs", [])
                if output["output_type"] == "error"]
    assert len(tagged(notebook, "parameters")) == 1


def test_training_notebook_defaults_are_he_et_al_recipe():
    [cell] = tagged(load(REPO_ROOT / "notebooks" / "03_train.ipynb"), "parameters")
    namespace = {}
    exec("".join(cell["source"]), namespace)
    del namespace["__builtins__"]
    assert namespace.pop("report_dir") == ""
    assert namespace == dataclasses.asdict(Config())

"""hw2.notebook: a parameters cell's Config, paths from the checkout, the live training curves."""
import os

import matplotlib
import pytest

from hw2 import notebook
from hw2.config import Config
from hw2.errors import ConfigError
from conftest import metric_rows, parameter_lines

matplotlib.use("Agg")


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A folder laid out as the repository, with the current folder in its notebooks/ (as JupyterLab's kernels)."""
    for folder in ("hw2", "notebooks", "data"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    return tmp_path


def test_parameter_lines_are_config_defaults_with_their_meanings():
    lines = parameter_lines(["epochs", "lr_milestones", "modeldir"])
    assert lines[0].startswith("epochs = 182 ") and lines[0].endswith("  # passes over the training split")
    assert lines[1].startswith("lr_milestones = [91, 136]  # ") and lines[2].startswith("modeldir = ''")
    assert len({line.index("#") for line in lines}) == 1  # the comments line up
    namespace = {}
    exec("\n".join(parameter_lines()), namespace)
    assert notebook.cell_config(namespace) == Config()


def test_project_dir_is_the_checkout_from_any_folder_in_it(checkout, tmp_path_factory):
    assert notebook.project_dir() == checkout
    assert notebook.project_dir(checkout / "hw2") == checkout == notebook.project_dir(checkout)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    assert notebook.project_dir(elsewhere) == elsewhere  # outside a checkout: where the notebook runs


def test_relative_paths_name_the_same_place_from_any_folder(checkout, monkeypatch):
    assert notebook.in_project("data") == os.path.join("..", "data")  # from notebooks/
    monkeypatch.chdir(checkout)
    assert notebook.in_project("data") == "data"
    assert notebook.in_project(checkout / "elsewhere") == str(checkout / "elsewhere")  # an absolute path as it is


def test_notebook_config_reads_the_named_parameters_on_every_run_as_given(checkout):
    """The Config is the request as the cell gives it; the project's paths are in_project's, where cells use them."""
    names = ["resnet_version", "modeldir", "data_dir"]
    namespace = {"resnet_version": 2, "modeldir": "runs/a", "data_dir": "data", "config": "an earlier run's"}
    config = notebook.notebook_config(namespace, names)
    assert (config.resnet_version, config.modeldir, config.data_dir) == (2, "runs/a", "data")
    assert notebook.in_project(config.checkpoint_dir) == os.path.join("..", "runs", "a")  # from notebooks/
    assert notebook.notebook_config(namespace, names) == config  # a second Run All: the same
    default = notebook.notebook_config({"resnet_version": 2, "modeldir": ""}, ["resnet_version", "modeldir"])
    assert notebook.in_project(default.checkpoint_dir) == os.path.join("..", "model_v2")


def test_notebook_config_refuses_a_name_papermill_injected_that_it_does_not_take(checkout):
    parameters = {"resnet_size": 5, "checkpoints": [1]}
    inputs = ["", "resnet_size = 3\ncheckpoints = []", "# Parameters\nresnet_sise = 5\n", "config = ..."]
    with pytest.raises(ConfigError, match="resnet_sise: not a parameter of this notebook; "
                                          "its parameters are resnet_size, checkpoints"):
        notebook.notebook_config({**parameters, "In": inputs}, ["resnet_size"], others=["checkpoints"])
    inputs[2] = "# Parameters\nresnet_size = 5\ncheckpoints = [1]\n"
    config = notebook.notebook_config({**parameters, "In": inputs}, ["resnet_size"], others=["checkpoints"])
    assert config.resnet_size == 5


def test_report_dir_is_named_after_the_modeldir_in_the_projects_reports(checkout):
    folder = notebook.report_dir(notebook.notebook_config({"modeldir": "runs/r20"}, ["modeldir"]))
    assert folder.resolve() == checkout / "reports" / "r20" and folder.is_dir()


def test_live_curves_show_one_figure_and_redraw_it_in_place(monkeypatch, capsys):
    shown = []

    class Handle:
        def update(self, fig):
            shown.append(("update", fig))

    def display(fig, display_id):
        shown.append(("display", fig))
        return Handle()

    monkeypatch.setattr(notebook, "display", display)
    report = notebook.NotebookReport("run")
    for epochs in (1, 2, 3):
        rows = metric_rows(epochs)
        report.epoch_finished(rows[-1], rows)
        assert report.figure is shown[-1][1]
    assert [kind for kind, _ in shown] == ["display", "update", "update"]
    assert [len(fig.axes[0].lines[0].get_xdata()) for _, fig in shown] == [1, 2, 3]
    assert shown[-1][1].texts[0].get_text() == "run"  # the title
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(" Loss")[0] for line in printed] == ["Epoch 1", "Epoch 2", "Epoch 3"]  # the lines too


def test_a_notebook_without_config_fields_has_an_empty_parameter_list():
    assert parameter_lines([]) == []

"""How a notebook runs: its parameters cell turned into a Config (papermill's injected names checked), its
relative paths taken from the checkout whichever folder the kernel started in, where it saves figures, and the
training curves drawn live. The figures and tables themselves are hw2.report's.
"""
import ast
import dataclasses
import os
from pathlib import Path

from hw2.config import Config, help_text
from hw2.errors import ConfigError
from hw2.report import training_curves

FIELDS = [f.name for f in dataclasses.fields(Config)]
PAPERMILL_HEADER = "# Parameters\n"  # how the cell papermill injects after the parameters cell starts


def parameter_lines(names=FIELDS):
    """A parameters cell's lines: each Config field with its default and its meaning, `name = default  # help`."""
    defaults = dataclasses.asdict(Config())
    assignments = [f"{name} = {defaults[name]!r}" for name in names]
    width = max(map(len, assignments), default=0)
    return [f"{line:{width}}  # {help_text(name)}" for line, name in zip(assignments, names)]


def project_dir(start="."):
    """The checkout a notebook belongs to: the nearest of `start` and its parents that holds hw2/ and
    notebooks/ (JupyterLab starts a kernel in notebooks/, papermill in the caller's folder); `start` itself
    when there is none (a notebook run outside a checkout)."""
    start = Path(start).resolve()
    return next((folder for folder in [start, *start.parents]
                 if (folder / "hw2").is_dir() and (folder / "notebooks").is_dir()), start)


def in_project(path):
    """A relative path parameter (data_dir, modeldir) taken from project_dir() and spelled from the current
    folder, so that it names the same place whichever folder the kernel started in; an absolute one as is."""
    return str(path) if Path(path).is_absolute() else os.path.relpath(project_dir() / path)


def injected_names(inputs):
    """Names assigned in the last cell papermill injected, among a kernel's inputs (IPython's `In`)."""
    injected = [source for source in inputs if source.startswith(PAPERMILL_HEADER)]
    body = ast.parse(injected[-1]).body if injected else []
    return {target.id for node in body if isinstance(node, ast.Assign) for target in node.targets}


def notebook_config(namespace, names=FIELDS, others=()):
    """The Config a notebook's parameters cell sets: Config.from_parameters(namespace, names), with data_dir
    and modeldir made relative to the project (in_project). `others` are the notebook's parameters that are
    not Config fields; any other name that papermill injected (`-p resnet_sise 5`) is a ConfigError, where
    it would otherwise be ignored."""
    unknown = sorted(injected_names(namespace.get("In", [])) - {*names, *others})
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a parameter of this notebook; "
                          f"its parameters are {', '.join([*names, *others])}")
    config = Config.from_parameters(namespace, names)
    return dataclasses.replace(config, data_dir=in_project(config.data_dir), modeldir=in_project(config.checkpoint_dir))


def report_dir(config):
    """Where the notebooks save a run's figures: reports/<modeldir's name>/ in the project, made when missing."""
    folder = Path(in_project("reports")) / Path(config.modeldir).name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def display(*args, **kwargs):
    """IPython's display, imported when first called: importing hw2.notebook needs no IPython, which only a
    notebook has."""
    from IPython.display import display
    return display(*args, **kwargs)


class LiveCurves:
    """train()'s on_epoch callback in a notebook: shows training_curves of the epochs so far as one output
    and redraws it in place after each epoch (live in JupyterLab; a saved notebook keeps the last drawing)."""

    def __init__(self, title=""):
        self.title, self.shown = title, None

    def __call__(self, metrics):
        fig = training_curves(metrics, self.title)
        if self.shown is None:
            self.shown = display(fig, display_id=True)
        else:
            self.shown.update(fig)
        return fig

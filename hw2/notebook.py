"""The notebook front end: a notebook's parameters cell turned into a Config (papermill's injected names
checked), its relative paths taken from the checkout whichever folder the kernel started in, where it saves
figures, what training and testing report shown as lines, a progress bar and live training curves
(NotebookReport), and hw2's errors shown as one line that names parameters as the parameters cell sets them. The
figures and tables themselves are hw2.report's.
"""
import ast
import dataclasses
import os
import sys
from pathlib import Path

from tqdm import tqdm

from hw2.config import FIELDS, Config, config_from
from hw2.errors import NO_VALUE, ConfigError, use_words
from hw2.events import Lines
from hw2.report import training_curves
from hw2.tensorboard import require_tensorboard

PAPERMILL_HEADER = "# Parameters\n"  # how the cell papermill injects after the parameters cell starts


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


def parameter_words(name, value):
    """How a notebook names a parameter in a message: as its parameters cell sets it, `on_nan = 'skip'`; by
    its name where the message gives no value ("choose another modeldir")."""
    return name if value is NO_VALUE else f"{name} = {value!r}"


def _kernel():
    """The IPython kernel this runs in, or None (a script, the tests)."""
    ipython = sys.modules.get("IPython")
    return getattr(ipython.get_ipython(), "kernel", None) if ipython else None


def cell_config(namespace, names=FIELDS, recipe=None):
    """Config from the variables a notebook's parameters cell sets: `names`, each of which must be in
    `namespace`, so that a rerun starts from what the cell says. With a recipe, the parameters the cell leaves at
    their defaults take the recipe's values, as flags not given do on the command line (hw2.config.config_from);
    those it sets otherwise, or that papermill injected (`-p epochs 182`), win."""
    missing = [name for name in names if name not in namespace]
    if missing:
        raise ConfigError(f"the parameters cell must set {missing}: run it (or Run All) again")
    if recipe is None:
        return Config(**{name: namespace[name] for name in names})
    defaults, injected = dataclasses.asdict(Config()), injected_names(namespace.get("In", []))
    return config_from(recipe, **{name: namespace[name] for name in names
                                  if name in injected or namespace[name] != defaults[name]})


def notebook_config(namespace, names=FIELDS, others=()):
    """The Config a notebook's parameters cell asks for (cell_config), as given: its relative paths are the
    project's, which in_project spells from the kernel's folder where a cell uses them. `others` are the
    notebook's parameters that are not Config fields, among them `recipe` where the notebook takes one; any
    other name that papermill injected (`-p resnet_sise 5`) is a ConfigError, where it would otherwise be
    ignored. In a kernel, from then on hw2's messages name parameters as the parameters cell does
    (parameter_words), and IPython shows an hw2 error as its one line (Hw2Error._render_traceback_)."""
    if _kernel() is not None:
        use_words(parameter_words)
    unknown = sorted(injected_names(namespace.get("In", [])) - {*names, *others})
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a parameter of this notebook; "
                          f"its parameters are {', '.join([*names, *others])}")
    config = cell_config(namespace, names, namespace.get("recipe") if "recipe" in others else None)
    if config.tensorboard:
        require_tensorboard()  # without the package: refused here, before the cells that read data and train
    return config


def report_dir(config):
    """Where the notebooks save a run's figures: reports/<modeldir's name>/ in the project, made when missing."""
    folder = Path(in_project("reports")) / config.checkpoint_dir.name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def display(*args, **kwargs):
    """IPython's display, imported when first called: importing hw2.notebook needs no IPython, which only a
    notebook has."""
    from IPython.display import display
    return display(*args, **kwargs)


class NotebookReport(Lines):
    """Shows what training and testing report in a notebook: the command line's lines, a progress bar that fits
    the frontend, and (with a title) the training curves of the epochs so far as one output, redrawn in place
    after each epoch (live in JupyterLab; a saved notebook keeps the last drawing, `figure`)."""

    def __init__(self, title=None):
        super().__init__()
        self.title, self.shown, self.figure = title, None, None

    def progress_bar(self, **kwargs):
        """A widget where a person watches (JupyterLab), plain text on stdout where papermill (nbclient) runs
        the notebook, whose saved output could only keep a widget's placeholder. The two are told apart by
        whether the frontend can answer input(): the execute request says so (`allow_stdin`, Jupyter's
        messaging protocol); JupyterLab can, nbclient cannot."""
        kernel = _kernel()
        request = kernel.get_parent("shell") if kernel is not None else {}
        if request.get("content", {}).get("allow_stdin", False):
            from tqdm.notebook import tqdm as widget_bar  # needs ipywidgets, which only notebooks need
            return widget_bar(**kwargs)
        return tqdm(file=sys.stdout, **kwargs)

    def epoch_finished(self, row, metrics):
        super().epoch_finished(row, metrics)
        self.draw(metrics)

    def finished(self, metrics, modeldir):
        super().finished(metrics, modeldir)
        self.draw(metrics)  # also a finished run shown at once, which has drawn nothing yet

    def draw(self, metrics):
        if self.title is None:
            return
        self.figure = training_curves(metrics, self.title)
        if self.shown is None:
            self.shown = display(self.figure, display_id=True)
        else:
            self.shown.update(self.figure)

"""The library reports, the front ends speak: training and testing show nothing unless given a Reporter
(hw2.events), a Reporter gets each event of a run in order, no module of the library prints or words a parameter
as one front end does, and the same error reads in the words of the front end in charge."""
import ast
import dataclasses
import re
import signal
from pathlib import Path

import pytest
import torch

import hw2
from hw2 import cli, events
from hw2.config import FIELDS, Config
from hw2.data import load_test_data
from hw2.errors import Interrupted, ModeldirError, worded_as
from hw2.evaluate import evaluate_checkpoints
from hw2.events import Reporter
from hw2.modeldir import list_checkpoints, read_metrics, read_tests
from hw2.notebook import parameter_words
from hw2.train import train
from conftest import as_flags, small_config, small_settings, untrained_checkpoint

EVENTS = [name for name in vars(Reporter) if not name.startswith("_") and name != "logging_to"]  # where it writes


class Recording(Reporter):
    """Keeps every event it is given, as (name, *arguments)."""

    def __init__(self):
        self.events = []


def _recorder(name):
    def record(self, *args):
        self.events.append((name, *args))
    return record


for event in EVENTS:
    setattr(Recording, event, _recorder(event))


def names(events):
    return [event[0] for event in events]


def with_a_warning(config):
    """config with a milestone it never reaches, which training warns about."""
    return dataclasses.replace(config, lr_schedule="step", lr_milestones=[config.epochs])


def test_without_a_reporter_training_and_testing_print_nothing_yet_write_their_files(cifar_dir, tmp_path, capsys):
    config = with_a_warning(small_config(cifar_dir, tmp_path))
    train(config)
    modeldir = config.checkpoint_dir
    assert list_checkpoints(modeldir)[-1].name == f"model-{config.epochs}.ckpt"
    assert [row["epoch"] for row in read_metrics(modeldir / "metrics.csv")] == list(range(1, config.epochs + 1))
    assert len((modeldir / "log.txt").read_text().splitlines()) == 1, "the session's heading, nothing printed"
    x, y = load_test_data(cifar_dir)
    evaluate_checkpoints(list_checkpoints(modeldir), x, y, device="cpu")
    assert [row["checkpoint"] for row in read_tests(modeldir)] == [p.name for p in list_checkpoints(modeldir)]
    assert capsys.readouterr() == ("", ""), "no line, no progress bar, no warning"


def test_a_run_reports_its_start_each_step_each_epoch_and_its_end_in_order(cifar_dir, tmp_path):
    config = with_a_warning(small_config(cifar_dir, tmp_path))
    report = Recording()
    model, metrics = train(config, report)
    events = report.events
    steps = next(event for event in events if event[0] == "steps_begin")[3]
    epoch = ["steps_begin", *["step"] * steps, "steps_end", "epoch_finished"]
    assert names(events) == ["started", "warning", *epoch * config.epochs, "finished"]
    assert events[0][1:3] == (config, model) and events[0][3] == torch.device("cpu")
    assert "lr_milestones" in events[1][1]
    assert [event for event in events if event[0] == "steps_begin"] == [
        ("steps_begin", e, 0, steps) for e in range(config.epochs)]
    assert [event[1] for event in events if event[0] == "epoch_finished"] == metrics
    assert events[-1] == ("finished", metrics, config.checkpoint_dir)


class StopAtTheSecondStep(Recording):
    """Sends its own process SIGINT, as Ctrl-C, at the second step of the run."""

    def step(self, loss):
        super().step(loss)
        if names(self.events).count("step") == 2:
            signal.raise_signal(signal.SIGINT)  # handled before this returns


def test_a_stopped_run_a_resumed_one_and_a_finished_one_report_so(cifar_dir, tmp_path):
    config = small_config(cifar_dir, tmp_path)
    stopping = StopAtTheSecondStep()
    with pytest.raises(Interrupted) as stopped:
        train(config, stopping)
    assert names(stopping.events) == ["started", "steps_begin", "step", "step", "stopping", "steps_end"]
    assert stopping.events[4] == ("stopping", "SIGINT")
    steps = stopping.events[1][3]

    resuming = Recording()
    _, metrics = train(dataclasses.replace(config, resume=True), resuming)
    events = resuming.events
    assert events[0] == ("resumed", stopped.value.path, 0, 2)  # first, before the run starts
    epoch = ["steps_begin", *["step"] * steps, "steps_end", "epoch_finished"]
    assert names(events) == ["resumed", "started", "steps_begin", *["step"] * (steps - 2), "steps_end",
                             "epoch_finished", *epoch * (config.epochs - 1), "finished"]
    assert events[2] == ("steps_begin", 0, 2, steps)

    again = Recording()  # a notebook's Run All again, on the finished run
    assert train(config, again, continue_same_run=True)[1] == metrics
    last = list_checkpoints(config.checkpoint_dir)[-1]
    assert [event for event in again.events if event[0] != "started"] == [
        ("continuing", config.checkpoint_dir), ("resumed", last, config.epochs, 0),
        ("nothing_to_train", config.checkpoint_dir, config.epochs), ("finished", metrics, config.checkpoint_dir)]
    assert names(again.events) == ["continuing", "resumed", "started", "nothing_to_train", "finished"]


# --- no module of the library speaks as a front end --------------------------------------------------------

FRONT_ENDS = {"cli.py", "notebook.py", "bench.py", "__main__.py"}
COMMAND = re.compile(r"`python -m hw2 [^`]*`")  # a whole example command line, fine in any message
FLAG = re.compile(r"--(?:no-)?(\w+)")


def front_end_words(source):
    """(line, what) for each print() call in `source`, and each string, docstrings aside, that says "in a
    notebook" or names a Config field as a flag (`--resume`) outside a whole `python -m hw2 ...` command. An
    f-string is read whole, its replacement fields as {}."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and ast.get_docstring(node, clean=False) is not None}
    in_fstrings = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append((node.lineno, "print()"))
        elif isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)
                                                 and id(node) not in docstrings | in_fstrings):
            text = node.value if isinstance(node, ast.Constant) else "".join(
                part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)
            if "in a notebook" in text:
                found.append((node.lineno, "in a notebook"))
            found += [(node.lineno, f"--{m[1]}") for m in FLAG.finditer(COMMAND.sub("", text)) if m[1] in FIELDS]
    return sorted(found)


def test_the_guard_finds_prints_and_front_end_words_but_not_docstrings_or_commands():
    source = '''"""python -m hw2 train --resume, or resume = True in a notebook."""
def f(modeldir):
    """Say --resume."""
    print("hello")
    raise ValueError(f"pass --resume to continue {modeldir}")
    raise ValueError("set resume = True in a notebook")
    raise ValueError(f"run `python -m hw2 train --modeldir {modeldir}` first; --steps is no Config field")
    return "--" + "-" * 3 + f"{modeldir:--^20}"
'''
    assert front_end_words(source) == [(4, "print()"), (5, "--resume"), (6, "in a notebook")]


def test_no_module_of_the_library_prints_or_speaks_as_a_front_end():
    """Apart from the one print of hw2.events.Lines.show: the text reporter a caller asks for by passing it."""
    library = [path for path in Path(hw2.__file__).parent.glob("*.py") if path.name not in FRONT_ENDS]
    assert len(library) > 5
    found = {path.name: front_end_words(path.read_text(encoding="utf-8")) for path in library}
    source = Path(events.__file__).read_text(encoding="utf-8").splitlines()
    [(line, _)] = found.pop("events.py")
    assert source[line - 2:line] == ["    def show(self, text):", "        print(text, flush=True)"]
    assert {name: words for name, words in found.items() if words} == {}


def test_the_same_refusal_reads_as_the_front_end_in_charge_words_it(cifar_dir, tmp_path, capsys):
    settings = small_settings(cifar_dir, tmp_path / "model")
    untrained_checkpoint(tmp_path / "model" / "model-1.ckpt", **{**settings, "epochs": settings["epochs"] + 1})
    ways = "Pass {} to continue that run with these values; to start another, choose a new {}."
    assert cli.main(["train", *as_flags(settings)]) == 2
    assert ways.format("--resume", "--modeldir") in capsys.readouterr().err
    with pytest.raises(ModeldirError) as refused:
        train(Config(**settings))
    assert ways.format("resume=True", "modeldir") in str(refused.value)  # the default, also after the CLI's main
    with pytest.raises(ModeldirError) as refused, worded_as(parameter_words):  # as in a notebook's kernel
        train(Config(**settings))
    assert ways.format("resume = True", "modeldir") in str(refused.value)

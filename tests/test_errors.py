"""Error messages name parameters with hw2.errors.field, and each front end words them in its own except, by
setting the error's `words`: keyword arguments for a Python caller (the default), flags on the command line,
assignments in a notebook. No state outside the error decides it."""
import signal

import pytest
import torch

from hw2 import cli
from hw2.config import Config
from hw2.data import load_data
from hw2.errors import NO_VALUE, ConfigError, DataError, Hw2Error, Interrupted, field, in_words
from hw2.runtime import resolve_device


def flag_words(name, value):
    """As a command line would word a parameter (the test's own: the front ends have theirs)."""
    return f"--{name}" if value is NO_VALUE else f"--{name} {value}"


def notebook_words(name, value):
    return f"{name} = ..." if value is NO_VALUE else f"{name} = {value!r}"


def error():
    return Hw2Error(f"no GPU here; use {field('device', 'cpu')}, or point {field('data_dir')} elsewhere")


def test_a_message_reads_in_python_words_by_default():
    assert str(error()) == "no GPU here; use device='cpu', or point data_dir elsewhere"


def worded(error, words):
    error.words = words
    return str(error)


def test_the_front_end_in_charge_words_the_fields():
    assert worded(error(), flag_words) == "no GPU here; use --device cpu, or point --data_dir elsewhere"
    assert worded(error(), notebook_words) == "no GPU here; use device = 'cpu', or point data_dir = ... elsewhere"
    assert in_words(error().args[0], notebook_words) == worded(error(), notebook_words)  # a reporter's messages


def test_wording_one_error_leaves_every_other_in_python_words(cifar_dir, capsys):
    assert worded(error(), flag_words).startswith("no GPU here; use --device cpu")
    assert str(error()) == "no GPU here; use device='cpu', or point data_dir elsewhere"
    assert cli.main(["test", "--modeldir", "nowhere", "--data_dir", str(cifar_dir)]) == 2  # the CLI's except
    assert "--modeldir" in capsys.readouterr().err
    assert str(error()) == "no GPU here; use device='cpu', or point data_dir elsewhere"


def test_the_librarys_errors_name_their_fields(tmp_path, monkeypatch):
    with pytest.raises(DataError) as missing:
        load_data(tmp_path / "nowhere")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as no_cuda:
        resolve_device("cuda")
    with pytest.raises(ConfigError) as bad:
        Config(epochs=0)
    assert "--" not in str(no_cuda.value) and "\x1f" not in str(missing.value)  # Python words until a front end's
    assert worded(missing.value, flag_words).endswith("or point --data_dir at the folder holding cifar-10-batches-py/")
    assert worded(no_cuda.value, flag_words) == ("--device cuda was asked for but torch sees no CUDA GPU; "
                                                 "use --device cpu or --device auto")
    assert worded(bad.value, flag_words) == "--epochs must be an integer >= 1, got 0"
    assert "or point data_dir = ... at the folder" in worded(missing.value, notebook_words)
    assert worded(no_cuda.value, notebook_words) == ("device = 'cuda' was asked for but torch sees no CUDA GPU; "
                                                     "use device = 'cpu' or device = 'auto'")


def test_a_stopped_process_other_than_the_main_one_says_who_wrote_the_checkpoint():
    assert str(Interrupted(signal.SIGTERM, None)) == ("stopped by SIGTERM; the main process wrote the checkpoint. "
                                                      "Run it again with resume=True to continue.")
    path = "runs/a/model-3-step7.ckpt"
    assert f"checkpoint written to {path}." in str(Interrupted(signal.SIGINT, path))

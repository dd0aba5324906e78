"""Error messages name parameters with hw2.errors.field, worded as the front end in charge names them: keyword
arguments for a Python caller (the default), flags on the command line, assignments in a notebook. A message is
worded as it is made, so it reads the same wherever it is shown."""
import signal

import pytest
import torch

from hw2 import cli
from hw2.config import Config
from hw2.data import load_data
from hw2.errors import NO_VALUE, ConfigError, DataError, Hw2Error, Interrupted, field, python_words, worded_as
from hw2.runtime import resolve_device


def flag_words(name, value):
    """As a command line would word a parameter (the test's own: the front ends have theirs)."""
    return f"--{name}" if value is NO_VALUE else f"--{name} {value}"


def notebook_words(name, value):
    return f"{name} = ..." if value is NO_VALUE else f"{name} = {value!r}"


def error():
    return Hw2Error(f"no GPU here; use {field('device', 'cpu')}, or point {field('data_dir')} elsewhere")


def message(words, make):
    """str() of what make() returns or raises (an Hw2Error), made while `words` is in charge."""
    with worded_as(words):
        try:
            return str(make())
        except Hw2Error as e:
            return str(e)


def test_a_message_reads_in_python_words_by_default():
    assert str(error()) == "no GPU here; use device='cpu', or point data_dir elsewhere"


def test_the_front_end_in_charge_words_the_fields():
    assert message(flag_words, error) == "no GPU here; use --device cpu, or point --data_dir elsewhere"
    assert message(notebook_words, error) == "no GPU here; use device = 'cpu', or point data_dir = ... elsewhere"


def test_a_front_end_words_what_is_made_while_it_is_in_charge_and_nothing_after(cifar_dir, capsys):
    made_before = error()
    assert message(flag_words, lambda: made_before) == "no GPU here; use device='cpu', or point data_dir elsewhere"
    with pytest.raises(ValueError), worded_as(flag_words):  # given back also when the block fails
        raise ValueError
    assert str(error()) == "no GPU here; use device='cpu', or point data_dir elsewhere"
    assert cli.main(["test", "--modeldir", "nowhere", "--data_dir", str(cifar_dir)]) == 2  # the CLI's words
    assert "--modeldir" in capsys.readouterr().err
    assert str(error()) == "no GPU here; use device='cpu', or point data_dir elsewhere"


def test_the_librarys_errors_name_their_fields(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    def missing():
        return load_data(tmp_path / "nowhere")

    def no_cuda():
        return resolve_device("cuda")

    def bad():
        return Config(epochs=0)

    for make, kind in ((missing, DataError), (no_cuda, ConfigError), (bad, ConfigError)):
        with pytest.raises(kind):
            make()
    assert "--" not in message(python_words, no_cuda)  # Python words unless a front end is in charge
    assert message(flag_words, missing).endswith("or point --data_dir at the folder holding cifar-10-batches-py/")
    assert message(flag_words, no_cuda) == ("--device cuda was asked for but torch sees no CUDA GPU; "
                                            "use --device cpu or --device auto")
    assert message(flag_words, bad) == "--epochs must be an integer >= 1, got 0"
    assert "or point data_dir = ... at the folder" in message(notebook_words, missing)
    assert message(notebook_words, no_cuda) == ("device = 'cuda' was asked for but torch sees no CUDA GPU; "
                                                "use device = 'cpu' or device = 'auto'")


def test_a_stopped_process_other_than_the_main_one_says_who_wrote_the_checkpoint():
    assert str(Interrupted(signal.SIGTERM, None)) == ("stopped by SIGTERM; the main process wrote the checkpoint. "
                                                      "Run it again with resume=True to continue.")
    path = "runs/a/model-3-step7.ckpt"
    assert f"checkpoint written to {path}." in str(Interrupted(signal.SIGINT, path))

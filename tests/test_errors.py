"""Error messages name parameters with hw2.errors.field, and the front end in charge words them: keyword arguments
for a Python caller, flags on the command line, assignments in a notebook."""
import pytest
import torch

from hw2.config import Config
from hw2.data import load_data
from hw2.errors import NO_VALUE, ConfigError, DataError, Hw2Error, field, use_words
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


def test_the_front_end_in_charge_words_the_fields():
    with use_words(flag_words):
        assert str(error()) == "no GPU here; use --device cpu, or point --data_dir elsewhere"
    with use_words(notebook_words):
        assert str(error()) == "no GPU here; use device = 'cpu', or point data_dir = ... elsewhere"


def test_use_words_restores_the_words_before_it_also_when_the_block_raises():
    with use_words(notebook_words):
        with pytest.raises(ZeroDivisionError):
            with use_words(flag_words):
                assert "--device cpu" in str(error())
                1 / 0
        assert "device = 'cpu'" in str(error())
    assert str(error()) == "no GPU here; use device='cpu', or point data_dir elsewhere"


def test_the_librarys_errors_name_their_fields(tmp_path, monkeypatch):
    with pytest.raises(DataError) as missing:
        load_data(tmp_path / "nowhere")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as no_cuda:
        resolve_device("cuda")
    with pytest.raises(ConfigError) as bad:
        Config(epochs=0)
    with use_words(flag_words):
        assert str(missing.value).endswith("or point --data_dir at the folder holding cifar-10-batches-py/")
        assert str(no_cuda.value) == ("--device cuda was asked for but torch sees no CUDA GPU; "
                                      "use --device cpu or --device auto")
        assert str(bad.value) == "--epochs must be an integer >= 1, got 0"
    with use_words(notebook_words):
        assert "or point data_dir = ... at the folder" in str(missing.value)
        assert str(no_cuda.value) == ("device = 'cuda' was asked for but torch sees no CUDA GPU; "
                                      "use device = 'cpu' or device = 'auto'")
    assert "--" not in str(no_cuda.value) and "\x1f" not in str(missing.value)

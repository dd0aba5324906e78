"""The command line as a user meets it: flags made from Config, help with defaults, `test` reading the network
from the checkpoint, expected failures as one line, the flag table of docs/cli.md."""
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from hw2 import cli
from hw2.cli import build_parser
from hw2.config import FAST_RECIPE, FIELDS, RECIPES, Config, help_text
from hw2.data import BATCH_DIR
from hw2.errors import CheckpointError, format_default
from hw2.modeldir import ModeldirLock, data_dir_of, run_differences
from conftest import as_flags, small_settings, untrained_checkpoint

ROOT = Path(__file__).resolve().parent.parent
README, CLI_PAGE = ROOT / "README.md", ROOT / "docs" / "cli.md"


def help_of(command, capsys, monkeypatch):
    """`python -m hw2 COMMAND --help` on one line."""
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping: argparse would break words at hyphens
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def options(help_text):
    """The options a --help lists (after `options:`, leaving out the usage's `python -m hw2`)."""
    return set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", help_text.split("options:")[1]))


def test_train_holds_only_the_flags_given_so_that_they_override_the_recipe(monkeypatch):
    assert vars(cli.build_parser().parse_args(["train"])) == {"command": "train", "recipe": "he"}
    seen = {}
    monkeypatch.setattr(cli, "train", lambda config, report: seen.setdefault("config", config))
    assert cli.main(["train"]) == 0 and seen["config"] == Config()  # He et al.'s recipe: the defaults


def test_every_train_flag_shows_its_meaning_and_default(capsys, monkeypatch):
    text = help_of("train", capsys, monkeypatch)
    defaults = dataclasses.asdict(Config())
    for name in FIELDS:
        assert f"{help_text(name)} (default: {format_default(defaults[name])})" in text, name
    assert options(text) == {"-h", "--help", "--recipe", *(f"--{name}" for name in FIELDS),
                             *(f"--no-{name}" for name in FIELDS if isinstance(defaults[name], bool))}


def test_test_lists_only_what_it_uses(capsys, monkeypatch):
    text = help_of("test", capsys, monkeypatch)
    assert options(text) == {"-h", "--help", "--checkpoint", "--checkpoints", "--modeldir", "--data_dir", "--device",
                             "--dtype", "--tta", "--no-tta", "--resnet_version", "--resnet_size", "--first_num_filters",
                             "--shortcut", "--dataset"}
    assert "(default: as the checkpoint was trained)" in text and "(default: the checkpoint's;" in text


@pytest.mark.parametrize("argv", [["train", "--epoch", "5"], ["test", "--model", "runs/x"]])
def test_abbreviated_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and f"unrecognized arguments: {' '.join(argv[1:])}" in capsys.readouterr().err


def flag_table():
    """docs/cli.md's flag table as Config says it: each field, its default and its meaning."""
    defaults = dataclasses.asdict(Config())
    rows = [f"| `--{name}` | `{format_default(defaults[name])}` | {help_text(name)} |" for name in FIELDS]
    return "\n".join(["| flag | default | meaning |", "| --- | --- | --- |", *rows])


def test_the_flag_table_of_the_docs_is_the_config():
    assert flag_table() in CLI_PAGE.read_text(), f"docs/cli.md's flag table should be\n{flag_table()}"


def test_the_readme_and_docs_name_existing_recipes():
    text = "".join(page.read_text() for page in [README, *(ROOT / "docs").glob("*.md")])
    named = set(re.findall(r"(?:--recipe|-p recipe) (\w+)", text))
    assert named and named <= set(RECIPES)


@pytest.fixture
def damaged_data(cifar_dir, tmp_path):
    """The synthetic CIFAR-10 with data_batch_2 damaged: testing needs the test batch alone."""
    data_dir = tmp_path / "data"
    shutil.copytree(cifar_dir, data_dir)
    (data_dir / BATCH_DIR / "data_batch_2").write_bytes(b"damaged")
    return data_dir


def test_test_reads_the_network_and_tta_from_the_checkpoint(tmp_path, damaged_data, capsys):
    modeldir = tmp_path / "model_v2"
    untrained_checkpoint(modeldir / "model-1.ckpt", resnet_version=2, resnet_size=1, first_num_filters=4, tta=True)
    test = ["test", "--modeldir", str(modeldir), "--data_dir", str(damaged_data), "--device", "cpu", "--dtype", "float32"]
    assert cli.main(test) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Testing model-1.ckpt of {modeldir} on the CIFAR-10 test batch in {damaged_data} (cpu, float32)"
    assert lines[1:3] == [f"Restored model parameters from {modeldir / 'model-1.ckpt'}",
                          "With flip test-time augmentation (tta): each image's logits averaged with its mirror image's"]
    assert re.fullmatch(r"Test accuracy: 0\.\d{4}", lines[3])
    assert cli.main([*test, "--no-tta", "--resnet_version", "2", "--checkpoint", "1"]) == 0
    assert "flip" not in capsys.readouterr().out


def test_test_refuses_an_architecture_flag_the_checkpoint_contradicts(tmp_path, damaged_data, capsys):
    modeldir = tmp_path / "model"
    untrained_checkpoint(modeldir / "model-1.ckpt", resnet_version=2, resnet_size=1, first_num_filters=4)
    assert cli.main(["test", "--modeldir", str(modeldir), "--data_dir", str(damaged_data), "--resnet_size", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {modeldir / 'model-1.ckpt'} holds a network with resnet_version 2, resnet_size 1, ")
    assert ", not resnet_size 3: " in err and len(err.splitlines()) == 1


def test_expected_failures_are_one_line_and_anything_else_keeps_its_traceback(monkeypatch, capsys):
    def fails(error):
        def train(config, report):
            raise error
        return train

    monkeypatch.setattr(cli, "train", fails(CheckpointError("could not write model-2.ckpt")))
    assert cli.main(["train"]) == 2
    assert capsys.readouterr().err == "error: could not write model-2.ckpt\n"
    monkeypatch.setattr(cli, "train", fails(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli.main(["train"])


def test_a_modeldir_in_use_is_one_line(cifar_dir, tmp_path, capsys):
    (tmp_path / "model").mkdir()
    with ModeldirLock(tmp_path / "model"):
        code = cli.main(["train", "--modeldir", str(tmp_path / "model"), "--data_dir", str(cifar_dir), "--device", "cpu"])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'model'} is in use by another training run (PID ")


def test_pyproject_declares_what_the_requirements_files_install():
    """The same packages, and each version that requirements*.txt pins (or starts from) allowed by pyproject."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = ROOT
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    declared = {r.name: r.specifier for r in map(Requirement, declared) if r.name != "hw2"}
    lines = [line.split("#")[0].strip() for name in ("requirements.txt", "requirements-test.txt")
             for line in (root / name).read_text().splitlines()]
    pinned = {r.name: r.specifier for r in map(Requirement, filter(None, lines))}
    assert declared.keys() == pinned.keys()
    for name, specifier in pinned.items():
        [version] = [s.version for s in specifier]
        assert declared[name].contains(version), (name, str(declared[name]), str(specifier))


def test_cli_train_then_test(cifar_dir, tmp_path):
    modeldir = tmp_path / "model_v1"
    settings = small_settings(cifar_dir, modeldir, epochs=2, save_interval=1)  # two checkpoints to test
    run = subprocess.run([sys.executable, "-m", "hw2", "train", *as_flags(settings)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Epoch 2 Loss" in run.stdout
    test = subprocess.run([sys.executable, "-m", "hw2", "test", "--data_dir", str(cifar_dir), "--modeldir", str(modeldir),
                           "--checkpoint", "1", "2"],
                          capture_output=True, text=True, timeout=300)
    assert test.returncode == 0, test.stderr
    lines = test.stdout.splitlines()
    assert f"Restored model parameters from {modeldir / 'model-1.ckpt'}" in lines
    accuracies = [float(l.split(": ")[1]) for l in lines if l.startswith("Test accuracy: ")]
    assert len(accuracies) == 2 and all(0 <= a <= 1 for a in accuracies)
    bad = subprocess.run([sys.executable, "-m", "hw2", "train", "--resnet_version", "3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "resnet_version must be 1 or 2" in bad.stderr


def test_test_reads_the_data_where_the_run_read_it_while_it_is_there(cifar_dir, tmp_path, monkeypatch, capsys):
    """A run trained with a relative --data_dir is tested from another folder with --modeldir alone: its
    resolved.json says where the data was."""
    (tmp_path / "work").mkdir()
    shutil.copytree(cifar_dir, tmp_path / "work" / "elsewhere")
    monkeypatch.chdir(tmp_path / "work")
    settings = small_settings("elsewhere", "run", epochs=1)
    assert cli.main(["train", *as_flags(settings)]) == 0
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    capsys.readouterr()
    assert cli.main(["test", "--modeldir", "../work/run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"Testing model-1.ckpt of ../work/run on the CIFAR-10 test batch in "
                               f"{(tmp_path / 'work' / 'elsewhere').resolve()} (")
    assert lines[2].startswith("Test accuracy: ")
    assert data_dir_of("../work/run") == str((tmp_path / "work" / "elsewhere").resolve())
    shutil.rmtree(tmp_path / "work" / "elsewhere")  # gone, or on another machine: the default
    assert data_dir_of("../work/run") == "data" and data_dir_of(tmp_path) == "data"


@pytest.mark.parametrize("overrides", [dict(nesterov=True, lr_milestones=[1, 2]),
                                       dict(tta=False, lr_milestones=[], modeldir="")])
def test_as_flags_are_read_back_as_the_settings(cifar_dir, tmp_path, overrides):
    """conftest's as_flags, through which the CLI tests pass their settings: lists, booleans, ''."""
    settings = {**small_settings(cifar_dir, tmp_path), **overrides}
    args = vars(build_parser().parse_args(["train", *as_flags(settings)]))
    assert {name: args[name] for name in settings} == settings


def test_fast_recipe_flag_sets_the_recipe_and_explicit_flags_win(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "train", lambda config, report: seen.setdefault("config", config))
    assert cli.main(["train", "--recipe", "fast", "--epochs", "7"]) == 0
    config = seen["config"]
    assert config.lr_schedule == "cosine" and config.label_smoothing == FAST_RECIPE["label_smoothing"]
    assert config.epochs == 7


def test_fast60_recipe_is_the_configuration_of_its_reported_runs(monkeypatch):
    """`--recipe fast60 --seed N` trains exactly what reports/fast60/ measured, apart from the seed and where and how
    it ran (run_differences leaves those out)."""
    seen = {}
    monkeypatch.setattr(cli, "train", lambda config, report: seen.setdefault("config", config))
    assert cli.main(["train", "--recipe", "fast60"]) == 0
    runs = sorted((ROOT / "reports" / "fast60").glob("fast60_seed*"))
    assert len(runs) >= 3
    for run in runs:  # fields newer than the runs (cutout, flip) count as their defaults, which the runs had
        assert set(run_differences(json.loads((run / "config.json").read_text()), seen["config"])) <= {"seed"}


def test_runs_prints_one_row_per_run_and_names_a_folder_that_is_not_one(capsys):
    reports = ROOT / "reports"
    assert cli.main(["runs", str(reports / "r20_he"), str(reports / "r20_5ep")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "network", "recipe", "parameters", "epochs", "best", "valid", "(epoch)", "last",
                                "valid", "test", "time", "device"]
    assert [line.split()[0] for line in lines[2:]] == ["r20_he", "r20_5ep"]
    assert cli.main(["runs", str(reports)]) == 2
    assert capsys.readouterr().err == f"error: {reports} is not a run: it has no config.json and no checkpoint\n"

"""The bundled ResNet-20 (hw2.checkpoint.PRETRAINED): a small weights-only checkpoint made by
benchmarks/bundle_pretrained.py, installed with hw2, whose recorded test accuracy is what it scores and what its
README says; and the rule by which `test` and `predict` use it: no --modeldir given, and no checkpoints in the
default one."""
import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from hw2 import cli
from hw2.checkpoint import PRETRAINED, Checkpoint
from hw2.config import Config
from hw2.data import CLASSES, load_test_data
from hw2.evaluate import classify, restore
from conftest import untrained_checkpoint
from test_predict import as_png

ROOT = Path(__file__).resolve().parent.parent
RECORD = json.loads(PRETRAINED.with_suffix(".json").read_text())
R20_HE = ROOT.parent / "shared" / "runs" / "r20_he" / "model-182.ckpt"  # the run it was made from, where kept
_spec = importlib.util.spec_from_file_location("bundle_pretrained", ROOT / "benchmarks" / "bundle_pretrained.py")
bundle_pretrained = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bundle_pretrained)


def test_the_bundled_network_is_he_et_als_resnet20_with_weights_only_in_at_most_1_5_mb():
    assert PRETRAINED.stat().st_size <= 1.5e6
    checkpoint = Checkpoint.load(PRETRAINED)
    assert Config.from_dict(checkpoint.config) == Config(resnet_version=1, resnet_size=3)  # He et al.'s recipe
    assert checkpoint.epoch == 182 and len(checkpoint.mean) == len(checkpoint.std) == 3
    assert not (checkpoint.step or checkpoint.optimizer or checkpoint.scaler or checkpoint.metrics
                or checkpoint.partial or checkpoint.average or checkpoint.source)
    model, _ = restore(PRETRAINED, "cpu")  # every weight in place (load_state_dict is strict)
    assert sum(p.numel() for p in model.parameters()) == 272474  # He et al.'s 0.27M


def test_bundling_keeps_the_weights_evaluation_uses_and_nothing_a_run_needs_to_continue(tmp_path, monkeypatch):
    model = untrained_checkpoint(tmp_path / "run" / "model-3.ckpt", resnet_size=1, first_num_filters=4,
                                 data_dir=str(tmp_path / "data"), modeldir=str(tmp_path / "run"), epochs=3)
    run = Checkpoint.load(tmp_path / "run" / "model-3.ckpt")
    average = {name: value + 1 if value.is_floating_point() else value for name, value in run.model.items()}
    run = dataclasses.replace(run, epoch=3, optimizer={"state": {}, "param_groups": []}, metrics=[{"epoch": 1.0}],
                              average=average)
    run.save(tmp_path / "run" / "model-3.ckpt")
    monkeypatch.setattr(sys, "argv", ["bundle_pretrained.py", str(tmp_path / "run" / "model-3.ckpt"),
                                      str(tmp_path / "bundled.ckpt")])
    bundle_pretrained.main()
    bundled = Checkpoint.load(tmp_path / "bundled.ckpt")
    assert bundled.model.keys() == model.state_dict().keys()
    assert all(torch.equal(bundled.model[name], value) for name, value in average.items()), "the moving average"
    assert (bundled.optimizer, bundled.metrics, bundled.average) == ({}, [], {})
    assert (bundled.epoch, bundled.mean, bundled.std) == (3, run.mean, run.std)
    assert bundled.config == {**run.config, "data_dir": "data", "modeldir": ""}, "no folder of the training machine"


@pytest.mark.skipif(not R20_HE.exists(), reason="the run the bundled network was made from is not here")
def test_the_bundled_file_is_what_the_script_makes_of_he_et_als_run():
    made, bundled = bundle_pretrained.weights_only(Checkpoint.load(R20_HE)), Checkpoint.load(PRETRAINED)
    # Config fields newer than the file are their defaults in both
    assert Config.from_dict(made.config) == Config.from_dict(bundled.config)
    assert (made.mean, made.std, made.epoch) == (bundled.mean, bundled.std, 182)
    assert made.model.keys() == bundled.model.keys()
    assert all(torch.equal(made.model[name], bundled.model[name]) for name in made.model)


def test_the_recorded_test_accuracy_is_what_test_prints_for_the_bundled_network(real_data_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    """On the 10,000 test images, evaluated as the record says; `test` run where no model_v1/ is."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["test", "--data_dir", str(real_data_dir), "--device", RECORD["device"],
                     "--dtype", RECORD["dtype"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"Testing the bundled ResNet-20 hw2/pretrained/resnet20_v1.ckpt, as model_v1 holds no "
                        f"checkpoints, on the CIFAR-10 test batch in {real_data_dir} ({RECORD['device']}, "
                        f"{RECORD['dtype']})")
    assert f"Test accuracy: {RECORD['test_accuracy']:.4f}" in lines
    assert not (PRETRAINED.parent / "test.csv").exists(), "hw2's folder is no run's: it keeps no test.csv"


def test_the_readme_gives_the_recorded_test_accuracy():
    text = (PRETRAINED.parent / "README.md").read_text()
    [stated] = re.findall(r"CIFAR-10 \(JPEG stand-in\): \*\*(\d+\.\d+)%\*\*", text)
    assert stated == f"{RECORD['test_accuracy']:.2%}".rstrip("%")
    assert f"in {RECORD['dtype']} on a CPU" in text.replace("\n", " ") and RECORD["trained_with"] in text


def test_pip_installs_every_file_of_hw2_pretrained():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["hw2"]
    files = [path.relative_to(ROOT / "hw2") for path in PRETRAINED.parent.iterdir()]
    assert PRETRAINED.relative_to(ROOT / "hw2") in files
    assert all(any(file.match(pattern) for pattern in patterns) for file in files), (files, patterns)


# --- the rule: no --modeldir, and the default modeldir holds no checkpoints -----------------------------------

@pytest.fixture
def picture(tmp_path, cifar_dir, monkeypatch):
    """A test image as a PNG, in a working directory without model_v1/ -> its path."""
    monkeypatch.chdir(tmp_path)
    x, _ = load_test_data(cifar_dir)
    return as_png(x[:1], tmp_path / "pictures")[0]


def test_predict_without_a_modeldir_names_the_classes_by_the_bundled_network_and_says_so(picture, capsys):
    assert cli.main(["predict", str(picture), "--device", "cpu", "--dtype", "float32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Classes of 1 picture by the bundled ResNet-20 hw2/pretrained/resnet20_v1.ckpt (cpu, float32)"
    [result] = classify(PRETRAINED, [picture], device="cpu", dtype="float32")
    assert [line.split()[0] for line in lines[2:]] == [guess.name for guess in result["top"]]
    assert {guess.name for guess in result["top"]} <= set(CLASSES)


def test_a_run_in_the_default_modeldir_is_used_instead(picture, capsys):
    untrained_checkpoint(Path("model_v1") / "model-1.ckpt", resnet_size=1, first_num_filters=4)
    assert cli.main(["predict", str(picture)]) == 0
    assert capsys.readouterr().out.startswith(f"Classes of 1 picture by {Path('model_v1') / 'model-1.ckpt'} (")


@pytest.mark.parametrize("flags, error", [
    (["--modeldir", "runs/empty"], "no checkpoints in runs/empty: train a run into it first, or point --modeldir at "
                                   "a run"),
    (["--checkpoint", "182"], "model_v1 has no model-182.ckpt; it has none. Choose epochs with --checkpoints")])
def test_a_modeldir_or_checkpoint_asked_for_must_exist(picture, capsys, flags, error):
    Path("runs/empty").mkdir(parents=True)
    assert cli.main(["predict", str(picture), *flags]) == 2
    assert capsys.readouterr().err == f"error: {error}\n"


def test_test_without_a_modeldir_tests_the_bundled_network_on_the_data_given(picture, cifar_dir, capsys):
    assert cli.main(["test", "--data_dir", str(cifar_dir), "--device", "cpu", "--dtype", "float32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"Testing the bundled ResNet-20 hw2/pretrained/resnet20_v1.ckpt, as model_v1 holds no "
                         f"checkpoints, on the CIFAR-10 test batch in {cifar_dir} (cpu, float32)",
                         f"Restored model parameters from {PRETRAINED}"]
    assert not (PRETRAINED.parent / "test.csv").exists()
    assert cli.main(["test", "--resnet_version", "2", "--data_dir", str(cifar_dir)]) == 2  # model_v2: a version 2
    assert "resnet20_v1.ckpt holds a network with resnet_version 1, " in capsys.readouterr().err

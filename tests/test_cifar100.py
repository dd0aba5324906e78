"""CIFAR-100 end to end on crafted data in the official layout (no CIFAR-100 is reachable from this project's
machines): a short run trains with top-5 validation, `test` reports top-5 beside top-1 with CIFAR-100's class
names, `predict` names CIFAR-100's classes, `runs` shows top-5, and a checkpoint is never tested on the other data
set."""
import json

import numpy as np
from PIL import Image

from hw2 import cli
from hw2.config import Config
from hw2.data import CIFAR100_CLASSES, load_test_data
from hw2.modeldir import read_metrics, read_tests
from conftest import as_flags, small_settings


def test_a_cifar100_run_trains_tests_with_top5_and_predicts_cifar100_names(cifar100_dir, tmp_path, capsys):
    modeldir = tmp_path / "c100"
    settings = small_settings(cifar100_dir, modeldir, dataset="cifar100", epochs=2, save_interval=1)
    assert cli.main(["train", *as_flags(settings)]) == 0
    config = json.loads((modeldir / "config.json").read_text())
    assert config["dataset"] == "cifar100" and config["num_classes"] == 100
    assert Config.from_dict(config).num_classes == 100
    rows = read_metrics(modeldir / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(row["valid_acc"] <= row["valid_top5"] <= 1 for row in rows)

    capsys.readouterr()
    assert cli.main(["test", "--modeldir", str(modeldir), "--data_dir", str(cifar100_dir)]) == 0
    out = capsys.readouterr().out
    assert "on the CIFAR-100 test batch" in out
    top1 = float(out.split("Test accuracy: ")[1].split()[0])
    top5 = float(out.split("Top-5 test accuracy: ")[1].split()[0])
    assert 0 <= top1 <= top5 <= 1
    per_class = out.split("Per-class test accuracy of model-2.ckpt:\n")[1].splitlines()
    assert [line.split()[0] for line in per_class] == CIFAR100_CLASSES
    [tested] = read_tests(modeldir)
    assert (float(tested["accuracy"]), float(tested["top5"])) == (top1, top5)
    assert f"(top-5 {100 * top5:.2f}%)" in cli.runs_table([modeldir]) and "cifar100, lr" in cli.runs_table([modeldir])

    x_test, y_test = load_test_data(cifar100_dir, "cifar100")
    picture = tmp_path / "picture.png"
    Image.fromarray(x_test[0].reshape(3, 32, 32).transpose(1, 2, 0)).save(picture)
    assert cli.main(["predict", str(picture), "--modeldir", str(modeldir), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)["images"]
    assert result["class"] in CIFAR100_CLASSES and len(result["top"]) == 5
    assert all(CIFAR100_CLASSES[guess["index"]] == guess["class"] for guess in result["top"])


def test_a_checkpoint_is_refused_on_the_other_data_set_in_one_line(cifar_dir, cifar100_dir, tmp_path, capsys):
    cifar10 = tmp_path / "c10"
    assert cli.main(["train", *as_flags(small_settings(cifar_dir, cifar10, epochs=1))]) == 0
    capsys.readouterr()
    nowhere = tmp_path / "no-data"  # refused before any download or read of the data
    assert cli.main(["test", "--modeldir", str(cifar10), "--data_dir", str(nowhere), "--dataset", "cifar100"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == (f"error: {cifar10 / 'model-1.ckpt'} was trained on cifar10 (10 classes) and cannot be tested on "
                    "cifar100: use --dataset cifar10, or a checkpoint of a run on cifar100")
    assert not read_tests(cifar10), "nothing was tested"
    assert cli.main(["test", "--modeldir", str(cifar10), "--data_dir", str(cifar_dir)]) == 0  # its own data set
    assert "Top-5" not in capsys.readouterr().out  # CIFAR-10 reports top-1 alone


def test_the_dataset_is_a_config_field_that_sets_the_outputs(tmp_path):
    assert Config().num_classes == 10 and Config(dataset="cifar100").num_classes == 100
    assert "num_classes" not in cli.build_parser().parse_args(["train", "--dataset", "cifar100"]).__dict__
    assert np.array_equal(Config.from_dict({"num_classes": 10, "epochs": 3}).lr_milestones, [91, 136])

"""What a modeldir keeps besides its checkpoints (config.json, resolved.json, log.txt, test.csv) and the table of
runs."""
import dataclasses
import json
from pathlib import Path

import pytest

from hw2.config import FAST_RECIPE, Config
from hw2.data import load_test_data
from hw2.errors import Hw2Error
from hw2.evaluate import evaluate_checkpoints
from hw2.events import Lines
from hw2.modeldir import open_log, read_tests, record_test, write_config, write_metrics
from hw2.runs import recipe, runs_table, seed_results
from hw2.train import train
from conftest import small_config

REPORTS = Path(__file__).resolve().parent.parent / "reports"


def test_a_run_keeps_its_config_and_what_it_printed(cifar_dir, tmp_path, capsys):
    config = small_config(cifar_dir, tmp_path, epochs=2, save_interval=1)
    train(config, Lines())  # as the command line prints
    printed = capsys.readouterr().out.splitlines()
    modeldir = config.checkpoint_dir
    assert Config.from_dict(json.loads((modeldir / "config.json").read_text())) == config  # the request, as given
    resolved = json.loads((modeldir / "resolved.json").read_text())  # what was decided for it
    assert resolved == {"device": "cpu", "dtype": resolved["dtype"], "resume": False, "processes": 1,
                        "modeldir": str(modeldir.resolve()), "data_dir": str(cifar_dir.resolve())}
    assert resolved["dtype"] in ("float32", "bfloat16")
    log = (modeldir / "log.txt").read_text().splitlines()
    assert log[0].startswith("--- ") and log[0].endswith(" train") and log[1:] == printed
    assert "\r" not in "".join(log) and sum(line.startswith("Epoch ") for line in log) == 2

    train(dataclasses.replace(config, epochs=3, resume=True), Lines())  # a second session adds to the log
    log = (modeldir / "log.txt").read_text()
    assert log.count("\n--- ") == 1 and "Resuming from" in log and "Epoch 3 Loss" in log
    assert json.loads((modeldir / "config.json").read_text())["epochs"] == 3
    assert json.loads((modeldir / "resolved.json").read_text())["resume"] is True


def test_the_log_keeps_the_reporters_lines_and_the_error_that_ended_the_run(tmp_path, capsys):
    report = Lines()
    with pytest.raises(ValueError):
        with open_log(tmp_path, "heading") as log, report.logging_to(log):
            report.show("first")
            print("not the reporter's")
            report.warning("second")
            raise ValueError("what went wrong")
    report.show("after the run")
    assert capsys.readouterr().out.splitlines() == ["first", "not the reporter's", "warning: second", "after the run"]
    log = (tmp_path / "log.txt").read_text().splitlines()
    assert log[0].startswith("--- ") and log[0].endswith(" heading")
    assert log[1:] == ["first", "warning: second", "ValueError: what went wrong"]


def test_testing_a_checkpoint_keeps_its_accuracy_for_the_table(cifar_dir, tmp_path, capsys):
    config = small_config(cifar_dir, tmp_path, epochs=2, save_interval=1)
    train(config)
    x, y = load_test_data(cifar_dir)
    paths = [config.checkpoint_dir / "model-1.ckpt", config.checkpoint_dir / "model-2.ckpt"]
    [_, last] = evaluate_checkpoints(paths, x, y, "cpu")
    evaluate_checkpoints(paths[1:], x, y, "cpu", tta=True)
    evaluate_checkpoints(paths[1:], x, y, "cpu", tta=True)  # again: replaces, not adds
    assert [(row["checkpoint"], row["tta"]) for row in read_tests(config.checkpoint_dir)] == [
        ("model-1.ckpt", "False"), ("model-2.ckpt", "False"), ("model-2.ckpt", "True")]

    header, rule, row = runs_table([config.checkpoint_dir]).splitlines()
    assert header.split()[:4] == ["run", "network", "recipe", "parameters"]
    assert row.startswith("model  ResNet-8 v1  lr 0.05, batch 20, wd 0.0001")  # small_config, no milestone left
    assert " 2/2 " in row and f"{100 * last['accuracy']:.2f}% / " in row and "% tta" in row
    assert row.endswith(f"cpu {json.loads((config.checkpoint_dir / 'resolved.json').read_text())['dtype']}")


def test_a_run_without_config_json_is_read_from_its_checkpoint(cifar_dir, tmp_path):
    config = small_config(cifar_dir, tmp_path, epochs=1)
    train(config)
    (config.checkpoint_dir / "config.json").unlink()  # as a run from before config.json
    assert "ResNet-8 v1" in runs_table([config.checkpoint_dir])
    with pytest.raises(Hw2Error, match="is not a run: it has no config.json and no checkpoint"):
        runs_table([tmp_path])
    (tmp_path / "bench").mkdir()
    with pytest.raises(Hw2Error, match=r"is not a run: it has no config.json and no checkpoint \(nor has any of "
                                       r"the other 1\)"):
        runs_table([tmp_path, tmp_path / "bench"])
    *_, last = runs_table([tmp_path / "bench", config.checkpoint_dir]).splitlines()  # a glob finds other folders
    assert last == f"Not runs (no config.json, no checkpoint), left out: {tmp_path / 'bench'}"


def test_the_recipe_in_a_few_words():
    assert recipe(dataclasses.asdict(Config())) == "lr 0.1 /10 at 91,136, batch 128, wd 0.0001"
    assert recipe(dataclasses.asdict(Config(**FAST_RECIPE))) == (
        "lr 0.2 cosine, warm-up 1, batch 128, wd 0.0005, nesterov, tta, smoothing 0.1, resize 0.75")


def test_the_runs_in_reports_compare():
    folders = sorted(path for path in REPORTS.glob("*") if path.is_dir())  # as reports/README.md's command
    folders += sorted(path for path in REPORTS.glob("*/*_seed*") if path.is_dir())
    table = runs_table(folders)
    *lines, left_out = table.splitlines()
    rows = {line.split()[0]: line for line in lines[2:] if not line.startswith("mean")}
    means = [line for line in lines[2:] if line.startswith("mean")]
    assert [line.split("(seeds ")[1].split(")")[0] for line in means] == ["0,1", "0,1,2", "0,1"]  # fast30_all,
    # fast60, fast60_all: the reports whose runs differ only in seed; their mean and std are results.json's
    assert "87.71 ± 0.47% / 88.74 ± 0.36% tta" in means[1]
    assert sorted(rows) == ["ema_fast", "fast30_all_seed0", "fast30_all_seed1", "fast30_ls0_seed0", "fast30_seed0",
                            "fast30_wd1e3_seed0", "fast60_all_seed0", "fast60_all_seed1", "fast60_alt_seed0",
                            "fast60_cutout_alt_seed0", "fast60_seed0", "fast60_seed1", "fast60_seed2", "full30_seed0",
                            "full60_seed0", "r20_5ep", "r20_fast", "r20_he", "r20_prog", "v2_size2"]
    reports = ("compile_avx2", "depth", "fast30", "fast30_all", "fast30_ls0", "fast30_wd1e3", "fast60", "fast60_all",
               "fast60_alt", "fast60_cutout_alt", "full30", "full60", "timing")  # folders that are not runs
    assert left_out.endswith("left out: " + ", ".join(str(REPORTS / name) for name in reports))
    assert "182/182 87.84% (168) 87.54% 87.42% / 89.04% tta" in " ".join(rows["r20_he"].split())
    assert rows["r20_he"].endswith("cpu bfloat16") and rows["v2_size2"].split()[1:3] == ["ResNet-20", "v2"]


def _finished_run(folder, seed, valid, tests, epochs=2, **changes):
    """A modeldir as a finished run of `epochs` leaves it (without checkpoints): its config, metrics and the
    test accuracies {tta: accuracy} of its last checkpoint."""
    folder.mkdir()
    write_config(folder, Config(epochs=epochs, seed=seed, modeldir=str(folder), **changes),
                 {"device": "cpu", "dtype": "float32"})
    write_metrics(folder, [dict(epoch=e, lr=0.1, train_loss=1.0, train_acc=0.5, valid_loss=1.0,
                                valid_acc=valid if e == epochs else 0.1, seconds=10.0) for e in range(1, epochs + 1)])
    for tta, accuracy in tests.items():
        record_test(folder / f"model-{epochs}.ckpt", tta, accuracy)
    return folder


def test_a_recipe_over_seeds_gives_each_seeds_figures_and_their_mean_and_spread(tmp_path):
    runs = [_finished_run(tmp_path / f"s{seed}", seed, valid, {False: test, True: test + 0.01}, save_interval=seed + 1)
            for seed, valid, test in ((0, 0.80, 0.85), (1, 0.82, 0.86), (2, 0.84, 0.87))]
    results = seed_results(runs, "mine", {"processor": "Some CPU", "native_bfloat16": False})
    assert results["recipe"] == "mine" and results["epochs"] == 2 and results["seeds"] == [0, 1, 2]
    assert results["test_accuracy"] == [0.85, 0.86, 0.87] and results["test_accuracy_tta"] == [0.86, 0.87, 0.88]
    assert results["valid_accuracy"] == [0.80, 0.82, 0.84] and results["seconds"] == [20.0] * 3
    assert results["test_accuracy_mean"] == 0.86 and results["test_accuracy_std"] == 0.01
    assert results["valid_accuracy_mean"] == 0.82 and results["valid_accuracy_std"] == 0.02
    assert (results["processor"], results["native_bfloat16"], results["dtype"]) == ("Some CPU", False, "float32")
    assert results["description"] == "lr 0.1, batch 128, wd 0.0001" and results["valid_tta"] is False
    assert results["config"]["epochs"] == 2 and "seed" not in results["config"]
    assert json.loads(json.dumps(results)) == results
    one = seed_results(runs[:1], "mine", {"processor": "Some CPU"})
    assert one["test_accuracy_mean"] == 0.85 and one["test_accuracy_std"] is None  # no spread from one seed
    unvalidated = [_finished_run(tmp_path / f"all{seed}", seed, float("nan"), {False: 0.9, True: 0.91}, valid_size=0)
                   for seed in (0, 1)]
    results = seed_results(unvalidated, "all", {"processor": "Some CPU"})
    assert results["valid_accuracy"] == [None, None] and results["valid_accuracy_mean"] is None
    assert results["test_accuracy_mean"] == 0.9 and json.loads(json.dumps(results)) == results


def test_seeds_of_different_recipes_or_unfinished_or_untested_runs_are_refused(tmp_path):
    first = _finished_run(tmp_path / "a", 0, 0.8, {False: 0.8, True: 0.81})
    other = _finished_run(tmp_path / "b", 1, 0.8, {False: 0.8, True: 0.81}, weight_decay=5e-4)
    with pytest.raises(Hw2Error, match="b is not the recipe of .*a: weight_decay differ"):
        seed_results([first, other], "mine", "cpu")
    untested = _finished_run(tmp_path / "c", 1, 0.8, {False: 0.8})
    with pytest.raises(Hw2Error, match=r"c has no test of model-2.ckpt with flip TTA: test that checkpoint with "
                                       r"tta=True$"):
        seed_results([first, untested], "mine", "cpu")
    unfinished = _finished_run(tmp_path / "d", 1, 0.8, {False: 0.8, True: 0.81})
    write_config(unfinished, Config.from_dict({**json.loads((unfinished / "config.json").read_text()), "epochs": 3}),
                 {"device": "cpu", "dtype": "float32"})
    with pytest.raises(Hw2Error, match=r"d has trained 2 of its 3 epochs: finish it \(train it again with "
                                       r"resume=True\)"):
        seed_results([unfinished], "mine", "cpu")


def test_runs_that_differ_only_in_seed_get_a_mean_and_std_row(tmp_path):
    seeds = [_finished_run(tmp_path / f"r_seed{seed}", seed, valid, {False: test, True: test + 0.01},
                           save_interval=seed + 1)  # save_interval does not change what is learned
             for seed, valid, test in ((0, 0.80, 0.85), (1, 0.82, 0.86), (2, 0.84, 0.87))]
    other = _finished_run(tmp_path / "other", 0, 0.5, {False: 0.5}, weight_decay=5e-4)
    lines = runs_table([*seeds, other]).splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["r_seed0", "r_seed1", "r_seed2", "other", "mean"]
    mean = lines[-1]
    assert mean.startswith("mean ± std (seeds 0,1,2)") and "lr 0.1, batch 128, wd 0.0001 " in mean
    # best and last validation (each run's last epoch is its best), test without and with flip TTA, minutes
    assert "82.00 ± 2.00%  82.00 ± 2.00%  86.00 ± 1.00% / 87.00 ± 1.00% tta  0.3 ± 0.0 min" in mean
    assert len(runs_table(seeds[:1] + [other]).splitlines()) == 4, "no row for a seed without another"

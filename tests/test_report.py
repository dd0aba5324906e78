import csv

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hw2 import report
from hw2.checkpoint import PRETRAINED
from hw2.config import FAST_RECIPE, Config
from hw2.modeldir import METRICS, read_metrics
from hw2.models import ResNet, count_parameters
from hw2.train import _load_data
from conftest import metric_rows, read_confusion

matplotlib.use("Agg")


def test_format_table_aligns_columns():
    lines = report.format_table(["class", "n"], [["cat", 5], ["airplane", 100]]).splitlines()
    assert lines == ["class       n", "--------  ---", "cat         5", "airplane  100"]


def test_class_count_table_counts_each_split():
    table = report.class_count_table({"train": np.array([0, 0, 1]), "test": np.array([1, 2])}, ["a", "b", "c"])
    rows = [line.split() for line in table.splitlines()[2:]]
    assert rows == [["a", "2", "0"], ["b", "1", "1"], ["c", "0", "1"], ["total", "3", "2"]]


def test_to_images_puts_the_colour_planes_last():
    x = np.zeros((2, 3072), np.uint8)
    x[1, 1024 + 5] = 7  # green plane, row 0, column 5
    images = report.to_images(x)
    assert images.shape == (2, 32, 32, 3) and images[1, 0, 5, 1] == 7 and images.sum() == 7


def test_augmentation_steps_pad_crop_and_flip():
    record = np.random.default_rng(0).integers(1, 256, 3072).astype(np.uint8)
    original, padded, cropped, flipped = report.augmentation_steps(record, 4, 4)
    assert padded.shape == (40, 40, 3) and padded[:4].max() == 0 and padded[:, -4:].max() == 0
    np.testing.assert_array_equal(cropped, original)  # the centre crop undoes the padding
    np.testing.assert_array_equal(flipped, original[:, ::-1])
    _, padded, corner, _ = report.augmentation_steps(record, 0, 8)
    np.testing.assert_array_equal(corner, padded[:32, 8:])


def test_image_figures_have_one_panel_per_image():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (60, 3072)).astype(np.uint8), np.repeat(np.arange(3), 20)
    grid = report.sample_grid(x, y, per_class=4, classes=["a", "b", "c"])
    assert len(grid.axes) == 12 and [grid.axes[i].get_ylabel() for i in (0, 4, 8)] == ["a", "b", "c"]
    steps = report.augmentation_figure(x, count=2)
    assert [ax.get_title() for ax in steps.axes][:2] == ["original", "padded by 4"] and len(steps.axes) == 8


def test_parameter_table_lists_he_et_al_networks_with_our_counts():
    lines = report.parameter_table().splitlines()[2:]
    assert [line.split("  ")[0] for line in lines] == [name for name, _ in report.PAPER_NETWORKS.values()]
    resnet20 = lines[0].split()
    assert resnet20[:5] == ["ResNet-20", "1", "3", "20", f"{count_parameters(ResNet(1, 3)):,}"]
    assert resnet20[-1] == "0.27M"


@pytest.mark.parametrize("version,widths", [(1, [8, 8, 16, 32]), (2, [8, 32, 64, 128])])
def test_stage_shapes_leave_the_model_as_it_was(version, widths):
    model = ResNet(version, 1, first_num_filters=8)
    running_mean = model.stack_layers[0][0].bn1.running_mean.clone()
    shapes = report.stage_shapes(model)
    assert shapes == [("start layer", (1, widths[0], 32, 32)), ("stack 1", (1, widths[1], 32, 32)),
                      ("stack 2", (1, widths[2], 16, 16)), ("stack 3", (1, widths[3], 8, 8)),
                      ("output layer", (1, 10))]
    assert model.training and torch.equal(model.stack_layers[0][0].bn1.running_mean, running_mean)
    assert report.stage_shapes(model) == shapes  # the hooks are gone: no duplicate entries


def test_training_curves_from_metrics_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, METRICS)
        writer.writeheader()
        writer.writerows(metric_rows(3))
    metrics = read_metrics(path)
    assert [row["train_acc"] for row in metrics] == pytest.approx([0.2, 0.4, 0.6])
    assert np.isnan(metrics[0]["valid_acc"])  # valid_size 0: no validation
    fig = report.training_curves(metrics)
    assert [ax.get_title() for ax in fig.axes] == ["cross-entropy loss", "accuracy", "learning rate at epoch end"]
    np.testing.assert_allclose(fig.axes[2].lines[0].get_ydata(), [0.1, 0.05, 0.1 / 3])
    fig.savefig(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_per_class_table_and_confusion_figures():
    confusion = torch.tensor([[3, 1], [0, 4]])
    result = {"confusion": confusion, "per_class_accuracy": confusion.diag() / confusion.sum(1)}
    rows = [line.split() for line in report.per_class_table(result, ["a", "b"]).splitlines()[2:]]
    assert rows == [["a", "4", "3", "0.7500"], ["b", "4", "4", "1.0000"]]
    fig = report.confusion_figure(confusion, ["a", "b"])
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["0", "1", "3", "4"]


def test_a_title_names_a_path_in_the_repository_from_its_top_folder_and_any_other_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(report.ROOT / "notebooks")  # where JupyterLab starts a notebook's kernel
    assert report.title_path("../runs/r20_he/model-182.ckpt") == "runs/r20_he/model-182.ckpt"
    assert report.title_path(PRETRAINED) == "hw2/pretrained/resnet20_v1.ckpt"
    assert report.title_path(tmp_path / "model-1.ckpt") == str(tmp_path / "model-1.ckpt")
    monkeypatch.chdir(tmp_path)
    assert report.title_path("runs/try/model-1.ckpt") == "runs/try/model-1.ckpt"


def test_misclassified_figure_titles_true_and_predicted_class():
    x = np.zeros((5, 3072), np.uint8)
    y, predicted = np.array([0, 1, 2, 1, 0]), np.array([0, 2, 2, 0, 0])
    fig = report.misclassified_figure(x, y, predicted, ["a", "b", "c"], columns=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["true b\npred c", "true b\npred a"] and len(fig.axes) == 4


def test_metrics_table_shows_the_epochs_asked_for():
    lines = report.metrics_table(metric_rows(3), [1, 3]).splitlines()
    assert lines[0].split() == ["epoch", "lr", "train", "loss", "train", "acc", "valid", "loss", "valid", "acc"]
    assert [line.split()[:3] for line in lines[2:]] == [["1", "0.1", "2.000"], ["3", "0.03333", "0.667"]]


def test_compare_curves_overlays_runs_in_one_colour_each():
    fig = report.compare_curves({"a": metric_rows(3), "b": metric_rows(5)})
    by_epoch, by_time, loss = fig.axes
    assert [line.get_label() for line in loss.lines] == ["a", "b"]
    assert [len(line.get_xdata()) for line in by_epoch.lines] == [3, 3, 5, 5]  # validation and training of each
    assert by_epoch.lines[0].get_color() == by_epoch.lines[1].get_color() == loss.lines[0].get_color()
    np.testing.assert_allclose(by_time.lines[2].get_xdata(), np.arange(1, 6) * 1.5 / 3600)  # hours, cumulated


def test_confused_pairs_are_the_largest_counts_off_the_diagonal():
    confusion = np.diag([90, 80, 70])
    confusion[0, 1], confusion[1, 0], confusion[2, 0] = 5, 20, 10
    lines = report.confused_pairs(torch.tensor(confusion), ["cat", "dog", "frog"], count=2).splitlines()
    assert [line.split() for line in lines[2:]] == [["dog", "cat", "20", "20.0%"], ["frog", "cat", "10", "12.5%"]]


@pytest.mark.parametrize("changes", [dict(valid_size=30), dict(valid_size=30, batch_size=7),
                                     dict(valid_size=0, train_subset=50), dict(valid_size=150, train_subset=100)])
def test_steps_per_epoch_are_the_training_loaders_batches(cifar_dir, changes):
    config = Config(data_dir=str(cifar_dir), **{"batch_size": 20, **changes})
    loader, _ = _load_data(config, config.data_dir, 0, 1, "cpu")  # as training deals them (200 images in cifar_dir)
    assert report.steps_per_epoch(config, images=200) == len(loader)


def test_schedule_is_get_lr_at_every_step_and_get_image_size_in_every_epoch():
    (progress, rates), (epochs, sizes) = report.schedule(Config())  # He et al.'s: 351 steps of 182 epochs
    assert len(progress) == 182 * 351 + 1 and progress[351] == 1 and progress[-1] == 182
    assert rates[:91 * 351] == [0.1] * (91 * 351) and rates[91 * 351] == pytest.approx(0.01)
    assert rates[-1] == pytest.approx(0.001) and sizes == [32] * 183 and epochs == list(range(183))
    (progress, rates), (epochs, sizes) = report.schedule(Config(**FAST_RECIPE))  # 390 steps of 16 epochs
    assert rates[0] == 0 and rates[390] == pytest.approx(0.2) and rates[-1] < 1e-5  # warm-up, then cosine to 0
    assert rates[195] == pytest.approx(0.1) and rates[int(8.5 * 390)] == pytest.approx(0.1)  # half way up, down
    assert sizes == [16] * 3 + [20] * 3 + [24] * 3 + [28] * 3 + [32] * 5  # the last repeated, for the staircase


def test_schedule_figure_draws_a_row_for_each_config():
    configs = {"mine": Config(epochs=3, lr_milestones=[2], valid_size=0, batch_size=10000),
               "fast": Config(**FAST_RECIPE)}
    fig = report.schedule_figure(configs)
    assert [ax.get_title() for ax in fig.axes] == [
        "mine: learning rate at each step", "mine: training images (pixels a side)",
        "fast: learning rate at each step", "fast: training images (pixels a side)"]
    rate, size = fig.axes[:2]
    np.testing.assert_allclose(rate.lines[0].get_xydata(), [[0, 0.1], [0.2, 0.1], [0.4, 0.1], [0.6, 0.1], [0.8, 0.1],
                                                           [1, 0.1], [1.2, 0.1], [1.4, 0.1], [1.6, 0.1], [1.8, 0.1],
                                                           [2, 0.01], [2.2, 0.01], [2.4, 0.01], [2.6, 0.01],
                                                           [2.8, 0.01], [3, 0.01]])
    np.testing.assert_array_equal(size.lines[0].get_xydata(), [[0, 32], [1, 32], [2, 32], [3, 32]])


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_smoothed_loss_floor_is_the_lowest_loss_that_label_smoothing_allows(smoothing):
    target = torch.full((10,), smoothing / 10)
    target[3] += 1 - smoothing
    best = torch.log(target.clamp(min=1e-30))[None]  # logits whose softmax is the smoothed target itself
    floor = report.smoothed_loss_floor(smoothing)
    assert F.cross_entropy(best, torch.tensor([3]), label_smoothing=smoothing).item() == pytest.approx(floor, abs=1e-6)
    for other in (best * 2, best / 2, torch.randn(1, 10)):  # surer, less sure, anything: higher
        assert F.cross_entropy(other, torch.tensor([3]), label_smoothing=smoothing).item() > floor - 1e-6
    assert smoothing or floor == 0


def test_confusion_summary_and_the_confusion_csv(tmp_path):
    confusion = np.diag([90, 80, 70])
    confusion[0, 1], confusion[1, 0], confusion[2, 0] = 5, 20, 10  # accuracies 94.7%, 80.0%, 87.5%
    assert report.confusion_summary(confusion, ["cat", "dog", "frog"]).splitlines() == [
        "most confused: dog called cat 20 times, cat called dog 5 times",
        "right least often: dog (80.0%); most often: cat (94.7%)"]
    report.write_confusion(tmp_path / "confusion.csv", torch.tensor(confusion), ["cat", "dog", "frog"])
    assert (tmp_path / "confusion.csv").read_text().splitlines() == [
        "true \\ predicted,cat,dog,frog", "cat,90,5,0", "dog,20,80,0", "frog,10,0,70"]
    matrix, classes = read_confusion(tmp_path / "confusion.csv")
    np.testing.assert_array_equal(matrix, confusion)
    assert classes == ["cat", "dog", "frog"] and matrix.dtype.kind == "i"

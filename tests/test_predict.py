"""Predicting pictures: classify gives a test image written as a PNG the logits evaluate computes for it, for
version 1, version 2 and imported checkpoints; `python -m hw2 predict` prints each file's top classes (or one
JSON document), names each file it cannot read in one line, and predicts the others."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hw2 import cli
from hw2.checkpoint import Checkpoint
from hw2.config import Config
from hw2.data import CIFAR100_CLASSES, CLASSES, load_test_data
from hw2.errors import CheckpointError
from hw2.evaluate import checkpoint_tta, classify, evaluate, restore
from hw2.models import ResNet
from hw2.published import import_checkpoint
from test_import import reference_logits, write_published

MEAN, STD = [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]


def random_checkpoint(path, version, **config):
    """Write a checkpoint of a ResNet of `version` whose BatchNorms have random statistics and affine parameters
    (an untrained network's logits are nearly the same for every image) -> its path."""
    torch.manual_seed(version)
    settings = dataclasses.asdict(Config(resnet_version=version, resnet_size=1, first_num_filters=8))
    settings.update(config)
    model = ResNet(version, 1, settings["num_classes"], 8)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2), m.bias.data.uniform_(-0.5, 0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    Checkpoint(model.state_dict(), settings, MEAN, STD).save(path)
    return path


def as_png(x, folder):
    """Each uint8 [3072] image of x written to folder/NNN.png -> the paths, in order."""
    folder.mkdir(exist_ok=True)
    paths = [folder / f"{i:03}.png" for i in range(len(x))]
    for image, path in zip(x, paths):
        Image.fromarray(image.reshape(3, 32, 32).transpose(1, 2, 0)).save(path)
    return paths


@pytest.fixture(params=["synthetic", "real"])
def test_images(request):
    """The first 24 test images and labels of the synthetic CIFAR-10, or of data/ (the real one or its stand-in)."""
    data_dir = request.getfixturevalue("cifar_dir" if request.param == "synthetic" else "real_data_dir")
    x, y = load_test_data(data_dir)
    return x[:24], y[:24]


@pytest.mark.parametrize("kind", ["version 1", "version 2 with tta", "imported"])
def test_a_test_image_as_a_png_gets_the_logits_evaluate_computes(tmp_path, test_images, kind):
    x, y = test_images
    if kind == "imported":
        state = write_published(tmp_path / "resnet8.th", 1)
        path, _ = import_checkpoint(tmp_path / "resnet8.th", tmp_path / "run")
    else:
        path = random_checkpoint(tmp_path / "run" / "model-1.ckpt", 1 if kind == "version 1" else 2, tta="tta" in kind)
    model, checkpoint = restore(path, "cpu")
    tta = checkpoint_tta(checkpoint)
    assert tta == (kind == "version 2 with tta")
    expected = evaluate(model, x, y, (checkpoint.mean, checkpoint.std), device="cpu", dtype="float32", tta=tta)
    assert expected["logits"].std(1).min() > 0.05, "logits worth comparing"
    results = classify(path, as_png(x, tmp_path / "png"), top=3, device="cpu", dtype="float32")
    logits = torch.stack([result["logits"] for result in results])
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)
    assert [result["top"][0].index for result in results] == expected["predicted"].tolist()
    if kind == "imported":  # and the published layout's own forward pass
        torch.testing.assert_close(logits, reference_logits(state, x, 1), rtol=1e-4, atol=1e-4)
    if tta:
        plain = evaluate(model, x, y, (checkpoint.mean, checkpoint.std), device="cpu", dtype="float32")["logits"]
        assert not torch.allclose(plain, logits, atol=1e-3)
        torch.testing.assert_close(torch.stack([r["logits"] for r in classify(path, x, tta=False, device="cpu",
                                                                               dtype="float32")]), plain)


def test_classify_takes_files_pil_images_arrays_or_the_cifar_batch_and_names_the_top_classes(tmp_path, cifar_dir):
    x, _ = load_test_data(cifar_dir)
    x = x[:3]
    path = random_checkpoint(tmp_path / "model-1.ckpt", 1)
    pixels = [image.reshape(3, 32, 32).transpose(1, 2, 0) for image in x]
    pictures = [as_png(x[:1], tmp_path / "png")[0], Image.fromarray(pixels[1]), pixels[2]]
    by_batch, by_picture = classify(path, x, top=4), classify(path, pictures, top=4)
    for a, b in zip(by_batch, by_picture):
        assert torch.equal(a["logits"], b["logits"]) and a["top"] == b["top"]
    for result in by_batch:
        probabilities = result["logits"].softmax(0)
        order = probabilities.argsort(descending=True)[:4].tolist()
        assert [guess.index for guess in result["top"]] == order
        assert [guess.name for guess in result["top"]] == [CLASSES[i] for i in order]
        assert [guess.probability for guess in result["top"]] == pytest.approx(probabilities[order].tolist())
    assert len(classify(path, x, top=50)[0]["top"]) == 10, "at most every class"
    assert classify(path, []) == []


def test_a_cifar100_checkpoint_names_cifar100s_classes(tmp_path):
    path = random_checkpoint(tmp_path / "model-1.ckpt", 2, num_classes=100, dataset="cifar100")
    [result] = classify(path, [np.zeros((40, 40, 3), np.uint8)], top=100)
    assert result["logits"].shape == (100,)
    assert sorted(guess.name for guess in result["top"]) == CIFAR100_CLASSES
    path = random_checkpoint(tmp_path / "model-2.ckpt", 1, dataset="cifar100")
    with pytest.raises(CheckpointError, match=r"has num_classes 10, but its dataset 'cifar100' has 100 classes, so "
                                              r"its outputs have no names; train with dataset and num_classes that"):
        classify(path, [np.zeros((32, 32), np.uint8)])


@pytest.fixture
def pictures(tmp_path, cifar_dir):
    """A modeldir with model-1.ckpt and model-2.ckpt, and pictures: two test images as PNG and one as JPEG in
    a folder (with a text file beside them), and bad files -> (modeldir, good files, bad files)."""
    modeldir = tmp_path / "run"
    random_checkpoint(modeldir / "model-1.ckpt", 1)
    random_checkpoint(modeldir / "model-2.ckpt", 2, tta=True)
    x, _ = load_test_data(cifar_dir)
    folder = tmp_path / "folder"
    pngs = as_png(x[:2], folder)
    Image.fromarray(x[2].reshape(3, 32, 32).transpose(1, 2, 0)).resize((100, 80)).save(folder / "c.jpg")
    (folder / "notes.txt").write_text("not a picture, and left out of the folder")
    bad = {"empty.png": b"", "text.jpg": b"hello", "cut.png": pngs[0].read_bytes()[:200]}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    return modeldir, [*pngs, folder / "c.jpg"], [tmp_path / name for name in [*bad, "gone.png"]]


def test_predict_prints_the_top_classes_of_each_picture_and_one_line_per_bad_file(pictures, tmp_path, capsys):
    modeldir, good, bad = pictures
    argv = ["predict", str(good[0]), str(bad[0]), str(tmp_path / "folder"), *map(str, bad[1:]),
            "--modeldir", str(modeldir), "--top", "3", "--device", "cpu", "--dtype", "float32"]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == f"Classes of 4 pictures by {modeldir / 'model-2.ckpt'} (cpu, float32, with flip tta)"
    expected = classify(modeldir / "model-2.ckpt", good, top=3, dtype="float32")
    files = [good[0], *good]  # the first file, then the folder's three
    assert lines[1::4] == list(map(str, files))
    for k, result in enumerate([expected[0], *expected]):
        width = max(len(guess.name) for guess in result["top"])
        assert lines[2 + 4 * k:5 + 4 * k] == [f"  {guess.name:<{width}} {guess.probability:6.1%}"
                                              for guess in result["top"]]
    empty, text, cut, gone = err.splitlines()
    assert empty == f"error: {bad[0]} is empty (0 bytes): save or copy the picture again"
    assert text == (f"error: {bad[1]} is not a picture Pillow can read (PNG, JPEG, WebP, GIF, BMP, TIFF, ...): "
                    "convert it to PNG or JPEG")
    assert cut.startswith(f"error: {bad[2]} is truncated or damaged (") and cut.endswith("save or download it again")
    assert gone == f"error: {bad[3]} does not exist"
    assert cli.main([*argv[:2], "--modeldir", str(modeldir), "--checkpoint", "1", "--no-tta"]) == 0
    assert capsys.readouterr().out.startswith(f"Classes of 1 picture by {modeldir / 'model-1.ckpt'} (")


def test_predict_json_is_one_document_with_each_files_classes_or_error(pictures, capsys):
    modeldir, good, bad = pictures
    argv = ["predict", *map(str, [good[0], bad[0], good[2]]), "--modeldir", str(modeldir), "--json", "--checkpoint",
            "1", "--device", "cpu", "--dtype", "float32"]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert err == ""
    assert {k: document[k] for k in ("checkpoint", "device", "dtype", "tta")} == {
        "checkpoint": str(modeldir / "model-1.ckpt"), "device": "cpu", "dtype": "float32", "tta": False}
    first, failed, third = document["images"]
    assert failed == {"file": str(bad[0]), "error": f"{bad[0]} is empty (0 bytes): save or copy the picture again"}
    expected = classify(modeldir / "model-1.ckpt", [good[0], good[2]], top=5, dtype="float32")
    for entry, file, result in zip((first, third), (good[0], good[2]), expected):
        top = [{"class": guess.name, "index": guess.index, "probability": pytest.approx(guess.probability)}
               for guess in result["top"]]
        assert entry == {"file": str(file), **top[0], "top": top}
    assert cli.main([*argv[:2], *argv[4:]]) == 0


def test_predict_best_is_model_best_ckpt_and_a_missing_one_lists_the_checkpoints(pictures, capsys):
    modeldir, good, _ = pictures
    argv = ["predict", str(good[0]), "--modeldir", str(modeldir), "--checkpoint", "best", "--device", "cpu"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (f"error: {modeldir} has no model-best.ckpt; it has model-1.ckpt, model-2.ckpt. "
                                       "Choose epochs with --checkpoints\n")
    shutil.copy(modeldir / "model-1.ckpt", modeldir / "model-best.ckpt")
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith(f"Classes of 1 picture by {modeldir / 'model-best.ckpt'} (cpu, ")
    for flag, message in (("--checkpoint last", "'last' is neither an epoch nor best"),
                          ("--top 0", "argument --top: must be at least 1, got 0")):
        with pytest.raises(SystemExit):
            cli.main([*argv[:4], *flag.split()])
        assert capsys.readouterr().err.endswith(f"{message}\n")


def test_predict_of_a_folder_without_pictures_is_an_error_for_that_folder(pictures, tmp_path, capsys):
    modeldir, good, _ = pictures
    (tmp_path / "empty").mkdir()
    assert cli.main(["predict", str(tmp_path / "empty"), str(good[1]), "--modeldir", str(modeldir)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"error: {tmp_path / 'empty'} is a folder with no picture files in it (")
    assert out.splitlines()[1] == str(good[1])


ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_example_is_what_predict_prints_by_the_bundled_network(tmp_path, capsys, monkeypatch):
    """As in a fresh checkout, without model_v1/; on the CPU, as the example was made."""
    block = (ROOT / "docs" / "cli.md").read_text().split("$ python -m hw2 predict notebooks/sample.png ", 1)[1]
    flags, *printed = block.split("```")[0].strip().splitlines()
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "sample.png", tmp_path / "notebooks")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["predict", "notebooks/sample.png", *flags.split(), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines() == printed

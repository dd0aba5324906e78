"""`python -m hw2 export`: ONNX and TorchScript files of a version 1 and a version 2 run, the bundled ResNet-20 and an
imported checkpoint give the logits hw2's own evaluation gives, for any number of images, and name the same classes;
docs/onnx_example.py runs one without hw2; bad requests are one line each."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import PIL
import pytest
import torch
from torch import nn

from conftest import small_config
from hw2 import cli
from hw2.checkpoint import PRETRAINED
from hw2.data import class_names, load_test_data
from hw2.evaluate import classify, fold_batchnorm, logits_of, restore
from hw2.events import Lines
from hw2.export import FORMATS, ONNX_PACKAGES
from hw2.published import import_checkpoint
from hw2.train import train
from test_import import write_published

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE, PICTURE = ROOT / "docs" / "onnx_example.py", ROOT / "notebooks" / "sample.png"


def export_flags(source, tmp_path, cifar_dir):
    """The checkpoint of `source` and the `export` flags that choose it: a run of one epoch of version 1 or 2 (whose
    BatchNorms have learnt statistics to fold), the bundled ResNet-20, or an imported published ResNet-8."""
    if source == "bundled":
        return PRETRAINED, []
    modeldir = tmp_path / source
    if source == "imported":
        write_published(tmp_path / "resnet8.th", 1)
        path, _ = import_checkpoint(tmp_path / "resnet8.th", modeldir)
        return path, ["--modeldir", str(modeldir)]
    train(small_config(cifar_dir, tmp_path, modeldir=modeldir, epochs=1, resnet_version=int(source[1])), Lines())
    return modeldir / "model-1.ckpt", ["--modeldir", str(modeldir), "--checkpoint", "1"]


def run_onnx(file, images):
    """onnxruntime's logits of float images, and the classes the file's metadata names."""
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("images", ["batch", 3, 32, 32])]
    classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0]), classes


def run_torchscript(file, images):
    model = torch.jit.load(file)
    return model(images).detach(), model.classes


@pytest.mark.parametrize("source", ["v1", "v2", "bundled", "imported"])
def test_exported_files_give_hw2s_logits_and_classes(source, tmp_path, cifar_dir, capsys):
    path, flags = export_flags(source, tmp_path, cifar_dir)
    model, checkpoint = restore(path, "cpu")
    x = load_test_data(cifar_dir)[0][:14]
    expected = logits_of(model, x, (checkpoint.mean, checkpoint.std), "cpu", "float32")
    assert expected.std() > 0.1  # logits worth comparing
    images = torch.from_numpy(x).view(-1, 3, 32, 32).float() / 255  # what the file takes: RGB in [0, 1]
    for format, run in zip(FORMATS, (run_onnx, run_torchscript)):
        file = tmp_path / f"model.{format}"
        assert cli.main(["export", *flags, "--format", format, "--output", str(file)]) == 0
        assert f"to {file} ({format}, BatchNorm folded)" in capsys.readouterr().out
        for batch in (slice(0, 1), slice(1, 14)):  # the batch axis is dynamic: one image, then 13
            logits, classes = run(file, images[batch])
            torch.testing.assert_close(logits, expected[batch], rtol=1e-3, atol=1e-3)
            assert classes == class_names(checkpoint.config["dataset"])
    folded = sum(isinstance(m, nn.BatchNorm2d) for m in fold_batchnorm(model).modules())
    assert [n.op_type for n in onnx.load(tmp_path / "model.onnx").graph.node].count("BatchNormalization") == folded


def test_the_docs_example_names_a_pictures_classes_without_hw2(tmp_path, cifar_dir):
    path, flags = export_flags("imported", tmp_path, cifar_dir)
    assert cli.main(["export", *flags, "--format", "onnx", "--output", str(tmp_path / "model.onnx")]) == 0
    # Python without its site-packages' .pth files (hw2's editable install) and run outside the checkout, given
    # only the folders of the example's three packages: hw2 cannot be imported, and torch must not be
    packages = os.pathsep.join(str(Path(m.__file__).parent.parent) for m in (onnxruntime, np, PIL))
    code = ("import importlib.util, runpy, sys; assert importlib.util.find_spec('hw2') is None; "
            f"sys.argv = ['onnx_example.py', 'model.onnx', {str(PICTURE)!r}]; "
            f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__'); assert 'torch' not in sys.modules")
    run = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": packages}, timeout=120)
    assert run.returncode == 0, run.stderr
    [guess] = classify(path, [PICTURE], top=3, tta=False, device="cpu", dtype="float32")
    line = run.stdout.strip()
    assert re.sub(r" [\d.]+%", "", line) == f"{PICTURE}: " + ", ".join(g.name for g in guess["top"])
    shown = [float(p) / 100 for p in re.findall(r" ([\d.]+)%", line)]
    np.testing.assert_allclose(shown, [g.probability for g in guess["top"]], atol=0.0006)  # printed to 0.1%


@pytest.mark.parametrize("flags,message", [
    (["--modeldir", "{tmp}/empty", "--format", "onnx"], "no checkpoints in {tmp}/empty: train a run into it first, "
                                                        "or point --modeldir at a run"),
    (["--format", "tflite"], "--format must be one of onnx, torchscript; got 'tflite'"),
    (["--checkpoint", "3", "--format", "onnx"], "--checkpoint picks a checkpoint of --modeldir, which is not given"),
], ids=["no checkpoint", "unknown format", "checkpoint without modeldir"])
def test_bad_requests_are_one_line_each(flags, message, tmp_path, capsys):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    assert cli.main(["export", *flags, "--output", str(tmp_path / "model.out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message.format(tmp=tmp_path)}") and err.count("\n") == 1
    assert not (tmp_path / "model.out").exists()


def test_an_unwritable_output_is_one_line(tmp_path, capsys):
    output = tmp_path / "absent" / "model.pt"
    assert cli.main(["export", "--format", "torchscript", "--output", str(output)]) == 2
    assert capsys.readouterr().err == (f"error: cannot write {output} (No such file or directory); choose another "
                                       f"--output\n")


@pytest.mark.parametrize("package", ONNX_PACKAGES)
def test_onnx_export_without_its_packages_says_what_to_install(package, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # what `import package` finds when it is not installed
    assert cli.main(["export", "--format", "onnx", "--output", str(tmp_path / "model.onnx")]) == 2
    assert capsys.readouterr().err == (f"error: exporting to ONNX needs onnx, onnxscript, onnxruntime, and {package} "
                                       "is not installed: pip install onnx onnxscript onnxruntime\n")
    assert not (tmp_path / "model.onnx").exists()

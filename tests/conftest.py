"""Shared fixtures and helpers: a small synthetic CIFAR-10 and CIFAR-100 in the official layouts (and an HTTP
server on 127.0.0.1 to download them from), the real CIFAR-10 stand-in when it has been prepared in data/, the Config
of a seconds-long training run, and checkpoints of untrained networks."""
import csv
import dataclasses
import functools
import http.server
import io
import pickle
import signal
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from hw2.checkpoint import Checkpoint
from hw2.config import FIELDS, SMALL_RUN, Config, help_text
from hw2.data import BATCH_DIR, BATCHES, CIFAR100_CLASSES, DATASETS, TEST_BATCH
from hw2.models import build_network

REAL_DATA = Path(__file__).resolve().parent.parent / "data"


def pytest_configure(config):
    """Undo an ignored SIGINT: a non-interactive shell starts background commands with SIGINT ignored, and
    pytest started under one (benchmarks/gpu.sh may be) would then not answer `timeout -s INT` with the
    KeyboardInterrupt that makes it stop and still print which tests passed and failed."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def synthetic_batch(n, seed):
    """n images whose class sets a colour and a bright stripe, plus noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 3, 32, 32))
    for i, c in enumerate(labels):
        images[i, c % 3] += 120 + 10 * c
        images[i, :, 3 * c:3 * c + 3, :] = 250
    data = np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3072)
    return {b"batch_label": b"synthetic", b"labels": labels.tolist(), b"data": data,
            b"filenames": [f"{i}.png".encode() for i in range(n)]}


class Py2Pickler(pickle._Pickler):
    """Protocol 2 with byte strings written as Python 2's cPickle wrote str (the official files' format),
    instead of Python 3's _codecs.encode calls."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_str8(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_str8


def py2_pickle(obj):
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_cifar(root, per_batch=40):
    folder = Path(root) / BATCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(BATCHES):
        (folder / name).write_bytes(py2_pickle(synthetic_batch(per_batch, seed)))
    return Path(root)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """A data_dir holding a synthetic CIFAR-10 (40 images a batch)."""
    return write_cifar(tmp_path_factory.mktemp("cifar"))


def synthetic_cifar100(per_class, seed):
    """A CIFAR-100 batch dict as the official `train` and `test` are, with per_class images of each of the 100
    fine classes in a seeded order: class c draws a bright row stripe at c % 10 and a column stripe at c // 10
    over noise, learnable in a few steps; its coarse label is c // 5 (not the official grouping)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(100), per_class))
    images = rng.integers(0, 60, (len(labels), 3, 32, 32))
    for i, c in enumerate(labels):
        images[i, :, 3 * (c % 10):3 * (c % 10) + 3, :] = 250
        images[i, :, :, 3 * (c // 10):3 * (c // 10) + 3] = 200
    return {b"batch_label": b"synthetic", b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist(),
            b"data": images.astype(np.uint8).reshape(len(labels), 3072),
            b"filenames": [f"{i}.png".encode() for i in range(len(labels))]}


def write_cifar100(root, per_class=2):
    """Write root/cifar-100-python/ as the official archive extracts it: `train` and `test` (per_class images of
    each class, so 100 * per_class each, as Python 2 pickles) and `meta` (the fine and coarse label names)
    -> root as a Path."""
    spec = DATASETS["cifar100"]
    folder = Path(root) / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate([*spec.train, spec.test]):
        (folder / name).write_bytes(py2_pickle(synthetic_cifar100(per_class, seed)))
    meta = {b"fine_label_names": [name.encode() for name in CIFAR100_CLASSES],
            b"coarse_label_names": [f"superclass_{i}".encode() for i in range(20)]}
    (folder / spec.meta).write_bytes(py2_pickle(meta))
    return Path(root)


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory):
    """A data_dir holding a synthetic CIFAR-100 (200 training and 200 test images)."""
    return write_cifar100(tmp_path_factory.mktemp("cifar100"))


@pytest.fixture(scope="session")
def real_data_dir():
    """data/ with the real CIFAR-10 (or the JPEG stand-in that .ci/run prepares)."""
    if not (REAL_DATA / BATCH_DIR / TEST_BATCH).exists():
        pytest.skip("CIFAR-10 is not in data/: run `python ../shared/data/make_cifar10.py data` or `python -m hw2 download`")
    return REAL_DATA


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 -> (base_url, folder, list of requested paths)."""
    www = tmp_path / "www"
    www.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www, requests
    server.shutdown()
    server.server_close()


# The tests' small run: hw2.config.SMALL_RUN on the synthetic CIFAR-10 of cifar_dir (160 training images, 40
# held out) in batches of 20, so 8 steps an epoch, at the rate 0.05, on the CPU (test_cuda.py moves it). Two
# things differ for the tests' sake: 8 filters, half the width, as the suite trains dozens of these runs; and
# the step schedule with a milestone inside the run, whose drop in the rate (also after a resume) tests check.
TEST_RUN = {**SMALL_RUN, "first_num_filters": 8, "lr_schedule": "step", "lr_milestones": [2], "batch_size": 20,
            "learning_rate": 0.05, "epochs": 3, "valid_size": 40, "save_interval": 2, "device": "cpu"}

# Notebook 03's suggested first try (its markdown names these values; test_notebooks.py checks that they agree),
# SMALL_RUN for one epoch on 500 images, so that the notebook's whole Run All takes about a minute.
FIRST_TRY = {**SMALL_RUN, "epochs": 1, "train_subset": 500, "valid_size": 200, "modeldir": "runs/try"}


def small_settings(cifar_dir, modeldir, **overrides):
    """TEST_RUN on cifar_dir writing to modeldir, with `overrides`; milestones past the epochs asked for are
    dropped."""
    settings = {**TEST_RUN, "data_dir": str(cifar_dir), "modeldir": str(modeldir), **overrides}
    settings["lr_milestones"] = [m for m in settings["lr_milestones"] if m < settings["epochs"]]
    return settings


def small_config(cifar_dir, tmp_path, **overrides):
    """The Config of a seconds-long run: small_settings writing to tmp_path/model unless `overrides` say."""
    return Config(**small_settings(cifar_dir, overrides.pop("modeldir", tmp_path / "model"), **overrides))


def as_flags(settings):
    """Config settings as `python -m hw2 train` flags: `--name value`; a list as `--name 1 2` (empty: a bare
    `--name`); True as `--name`, False as `--no-name`."""
    args = []
    for name, value in settings.items():
        if isinstance(value, bool):
            args.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, list):
            args += [f"--{name}", *map(str, value)]
        else:
            args += [f"--{name}", str(value)]
    return args


def metric_rows(epochs):
    """`epochs` rows of metrics.csv as read_metrics returns them, without validation (valid_size 0)."""
    return [{"epoch": epoch, "lr": 0.1 / epoch, "train_loss": 2 / epoch, "train_acc": 0.2 * epoch,
             "valid_loss": float("nan"), "valid_acc": float("nan"), "seconds": 1.5} for epoch in range(1, epochs + 1)]


def parameter_lines(names=FIELDS):
    """A notebook's parameters cell as its lines: each Config field with its default and its meaning,
    `name = default  # help`."""
    defaults = dataclasses.asdict(Config())
    assignments = [f"{name} = {defaults[name]!r}" for name in names]
    width = max(map(len, assignments), default=0)
    return [f"{line:{width}}  # {help_text(name)}" for line, name in zip(assignments, names)]


def read_confusion(path):
    """hw2.report.write_confusion's file -> (the confusion matrix, int [C, C]; the class names)."""
    with open(path, newline="") as f:
        header, *rows = csv.reader(f)
    return np.array([[int(count) for count in row[1:]] for row in rows]), header[1:]


def untrained_checkpoint(path, **fields):
    """Write `path` as the checkpoint of an untrained (seeded) network of Config(**fields) -> the network."""
    config = Config(**fields)
    torch.manual_seed(0)
    model = build_network(config)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Checkpoint(model.state_dict(), dataclasses.asdict(config), [120.0, 120.0, 110.0], [60.0, 60.0, 65.0]).save(path)
    return model

"""Shared fixtures: a small synthetic CIFAR-10 in the official layout (and as an archive served from
127.0.0.1), and the real CIFAR-10 stand-in when it has been prepared in data/."""
import functools
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from hw2 import REPO_ROOT
from hw2.data import BATCH_DIR, TEST_BATCH, TRAIN_BATCHES

REAL_DATA = REPO_ROOT / "data"


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
    for seed, name in enumerate(TRAIN_BATCHES + [TEST_BATCH]):
        (folder / name).write_bytes(py2_pickle(synthetic_batch(per_batch, seed)))
    return Path(root)


def make_archive(path, folder):
    """tar.gz of folder/cifar-10-batches-py -> (path, md5)."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(Path(folder) / BATCH_DIR, arcname=BATCH_DIR)
    return path, hashlib.md5(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """A data_dir holding a synthetic CIFAR-10 (40 images a batch)."""
    return write_cifar(tmp_path_factory.mktemp("cifar"))


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


def tar_with(path, members):
    """A tar.gz with the given (TarInfo, bytes-or-None) members -> (path, md5)."""
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path, hashlib.md5(Path(path).read_bytes()).hexdigest()

"""CIFAR-10: download the official python archive, read its batches safely, split train/validation.

Pixels stay uint8 ([N, 3072], R, G, B planes as stored: 150 MB for the whole set instead of 600 MB of
float32); labels are int64.
"""
import contextlib
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hw2.errors import DataError, field

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
BATCHES = TRAIN_BATCHES + [TEST_BATCH]
OFFICIAL_TEST_MD5 = "40351d587109b95175f43aff81a1287e"
# The JPEG stand-in (CIFAR-10's images from a public JPEG re-encoding, in CIFAR-10's batch files) is known by its
# test images' names (`<class>_<NNNN>.png`, in its fixed order), not by its pixels: they are decoded JPEGs, and
# another JPEG decoder may decode them a little differently.
STANDIN_TEST_NAMES_MD5 = "e9f28711647f74ce904fe2d5a6274a02"  # of repr(test_batch's b"filenames")
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _have_batches(data_dir, names=BATCHES):
    folder = Path(data_dir) / BATCH_DIR
    return all((folder / name).is_file() for name in names)


def md5sum(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url, dest):
    """Stream url into dest with a progress bar."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-10") as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))


def _safe_extract(archive, dest):
    """Extract a tar.gz into dest, refusing absolute paths, '..' and links (a crafted archive could
    otherwise write anywhere)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if m.name.startswith(("/", "\\")) or Path(m.name).is_absolute() or ".." in parts:
                    raise DataError(f"{archive}: refusing archive member with an unsafe path: {m.name!r}")
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"{archive}: refusing archive member that is a link or device: {m.name!r}")
            tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive} is truncated or corrupt ({e}); delete it and run "
                        "`python -m hw2 download` again") from e


def download(data_dir="data", url=CIFAR10_URL, md5=CIFAR10_MD5, need=BATCHES):
    """Make sure data_dir/cifar-10-batches-py/ holds CIFAR-10 (at least the batches in `need`); return that
    folder.

    Does nothing when the batches are already there. Otherwise uses data_dir/cifar-10-python.tar.gz
    if a manually fetched archive lies there, else downloads it from url. The archive's MD5 is checked
    before anything is extracted, and extraction goes to a temporary folder that replaces nothing until
    it is complete, so a bad archive leaves existing files alone. A failed download leaves nothing behind,
    not even the folders it created for it.
    """
    data_dir = Path(data_dir)
    folder = data_dir / BATCH_DIR
    if _have_batches(data_dir, need):
        return folder
    archive = data_dir / ARCHIVE_NAME
    if not archive.exists():
        created = [p for p in (data_dir, *data_dir.parents) if not p.exists()]  # deepest first
        data_dir.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(ARCHIVE_NAME + ".part")
        try:
            _fetch(url, partial)
        except (urllib.error.URLError, OSError) as e:
            partial.unlink(missing_ok=True)
            for p in created:
                with contextlib.suppress(OSError):  # never hides the error below
                    p.rmdir()
            raise DataError(
                f"CIFAR-10 is not in {folder} and could not be downloaded from {url} ({e}). "
                f"Run `python -m hw2 download --data_dir {data_dir}` where there is internet, or fetch the archive "
                f"by hand (MD5 {md5}) and put it at {archive}; it is extracted on the next run. If CIFAR-10 is "
                f"elsewhere, point {field('data_dir')} at the folder holding {BATCH_DIR}/.") from e
        os.replace(partial, archive)
    actual = md5sum(archive)
    if actual != md5:
        raise DataError(f"{archive} has MD5 {actual}, expected {md5}: the download is incomplete or not the "
                        f"CIFAR-10 python archive. Delete it and run `python -m hw2 download` again; nothing was extracted.")
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".extract-") as tmp:
        _safe_extract(archive, tmp)
        if not _have_batches(tmp):
            raise DataError(f"{archive} does not contain {BATCH_DIR}/ with the five training batches and the test batch")
        if folder.exists():
            shutil.rmtree(folder)  # an incomplete earlier extraction: the batches were checked missing above
        os.replace(Path(tmp) / BATCH_DIR, folder)
    return folder


class _BatchUnpickler(pickle.Unpickler):
    """Allows only the globals a CIFAR-10 batch contains, so a crafted pickle cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    # What Python 3's pickle writes for byte strings (protocol 2) and for arrays (protocol 5, its default).
    PYTHON3 = {("_codecs", "encode"), ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if (module, name) in self.PYTHON3:
            raise pickle.UnpicklingError(
                f"it was pickled by Python 3 (it calls {module}.{name}), and CIFAR-10 batches are Python 2 cPickle "
                "files (protocol 2, byte strings), as in the official archive: use the official files "
                "(`python -m hw2 download`), or write the batch dict with pickle.dump(batch, f, protocol=4)")
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _unpickle(path):
    """A batch file's object, unpickled safely; a clear error naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path} is missing: run `python -m hw2 download`, or point {field('data_dir')} at the "
                        f"folder holding {BATCH_DIR}/") from None
    except Exception as e:  # any unpickling failure: truncated, crafted, not a pickle
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from e
    return batch


def read_batch(path):
    """One batch file -> (pixels uint8 [N, 3072], labels int64 [N]); a clear error naming the file otherwise."""
    path = Path(path)
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path} is not a CIFAR-10 batch: expected keys b'data' and b'labels', found {keys}")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: b'data' should be a uint8 array [N, 3072], found {getattr(data, 'dtype', type(data))} {shape}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: expected {len(data)} integer labels, found {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must be in 0-9, found {labels.min()}..{labels.max()}")
    return data, labels.astype(np.int64)


def load_data(data_dir="data"):
    """Read data_dir/cifar-10-batches-py/ -> x_train [50000, 3072] uint8, y_train [50000] int64,
    x_test [10000, 3072], y_test [10000]."""
    folder = Path(data_dir) / BATCH_DIR
    train = [read_batch(folder / name) for name in TRAIN_BATCHES]
    x_test, y_test = load_test_data(data_dir)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def load_test_data(data_dir="data"):
    """Read data_dir/cifar-10-batches-py/test_batch alone -> x_test [10000, 3072] uint8, y_test [10000] int64:
    testing needs nothing else, so a damaged training batch does not stop it."""
    return read_batch(Path(data_dir) / BATCH_DIR / TEST_BATCH)


def data_label(data_dir="data"):
    """What the figures should call the data in data_dir: the official files (byte for byte), the JPEG
    stand-in (by its test images' names), or another copy."""
    path = Path(data_dir) / BATCH_DIR / TEST_BATCH
    if md5sum(path) == OFFICIAL_TEST_MD5:
        return "CIFAR-10"
    batch = _unpickle(path)
    names = batch.get(b"filenames") if isinstance(batch, dict) else None
    if hashlib.md5(repr(names).encode()).hexdigest() == STANDIN_TEST_NAMES_MD5:
        return "CIFAR-10 (JPEG stand-in)"
    return "CIFAR-10 (unofficial copy)"


def train_valid_split(x, y, valid_size=5000, seed=0):
    """Shuffled, seeded split -> (x_train, y_train, x_valid, y_valid). valid_size=0 keeps everything for training."""
    if not 0 <= valid_size < len(x):
        raise ValueError(f"valid_size must be in [0, {len(x)}), got {valid_size}")
    order = np.random.default_rng(seed).permutation(len(x))
    train, valid = order[valid_size:], order[:valid_size]
    return x[train], y[train], x[valid], y[valid]

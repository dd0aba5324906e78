"""CIFAR-10 and CIFAR-100: download the official python archives, read their batches safely, split
train/validation.

Pixels stay uint8 ([N, 3072], R, G, B planes as stored: 150 MB for the whole set instead of 600 MB of
float32); labels are int64. Each function takes `dataset`, 'cifar10' (the default) or 'cifar100', whose files
DATASETS describes; CIFAR-100's labels are its 100 fine labels.
"""
import contextlib
import dataclasses
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

from hw2.errors import ConfigError, DataError, field

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
# CIFAR-100's fine labels, in the order of the official meta file's b"fine_label_names" (alphabetical), built in
# so that a checkpoint's predictions can be named without the data
CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm"]


@dataclasses.dataclass(frozen=True)
class DataSet:
    """Where a data set comes from and how its official python archive is laid out."""
    name: str  # as messages and figures call it
    url: str  # the official archive
    md5: str  # of the archive
    archive: str  # the archive's file name, where download looks for one fetched by hand
    folder: str  # what the archive extracts to, inside data_dir
    train: list  # the training batch files in folder
    test: str  # the test batch file
    label_key: bytes  # the batches' key of the labels hw2 uses
    classes: list  # the class names, indexed by label
    meta: str = ""  # the file naming the classes (under names_key), checked against `classes`; "": none read
    names_key: bytes = b""
    test_md5: str = ""  # of the official test batch file, which data_label recognises
    download: str = "`python -m hw2 download`"  # the command that downloads it, for messages

    @property
    def files(self):
        return [*self.train, self.test, *([self.meta] if self.meta else [])]


DATASETS = {
    "cifar10": DataSet("CIFAR-10", CIFAR10_URL, CIFAR10_MD5, ARCHIVE_NAME, BATCH_DIR, TRAIN_BATCHES, TEST_BATCH,
                       b"labels", CLASSES, test_md5=OFFICIAL_TEST_MD5),
    "cifar100": DataSet("CIFAR-100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python.tar.gz", "cifar-100-python", ["train"],
                        "test", b"fine_labels", CIFAR100_CLASSES, meta="meta", names_key=b"fine_label_names",
                        test_md5="f0ef6b0ae62326f3e7ffdfab6717acfc",
                        download="`python -m hw2 download --dataset cifar100`"),
}


def reports_top5(num_classes):
    """Whether results report top-5 accuracy beside top-1: for CIFAR-100's 100 classes, as its papers do; CIFAR-10's
    report top-1 alone."""
    return num_classes > len(CLASSES)


def dataset_spec(dataset):
    """The DataSet called `dataset` ('cifar10' or 'cifar100'); a ConfigError naming the choices otherwise."""
    if dataset not in DATASETS:
        raise ConfigError(f"{field('dataset')} must be {' or '.join(map(repr, DATASETS))}; got {dataset!r}")
    return DATASETS[dataset]


def _have_batches(folder, names):
    return all((Path(folder) / name).is_file() for name in names)


def md5sum(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url, dest, desc):
    """Stream url into dest with a progress bar."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))


def _safe_extract(archive, dest, again):
    """Extract a tar.gz into dest, refusing absolute paths, '..' and links (a crafted archive could
    otherwise write anywhere). `again` is the command that downloads it again."""
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
        raise DataError(f"{archive} is truncated or corrupt ({e}); delete it and run {again} again") from e


def download(data_dir="data", url=None, md5=None, need=None, dataset="cifar10"):
    """Make sure data_dir holds the data set's extracted folder (cifar-10-batches-py/ for 'cifar10',
    cifar-100-python/ for 'cifar100'), with at least the files in `need` (default: all of them); return that
    folder. url and md5 default to the official archive's.

    Does nothing when the files are already there. Otherwise uses the archive (cifar-10-python.tar.gz,
    cifar-100-python.tar.gz) if a manually fetched one lies in data_dir, else downloads it from url. The
    archive's MD5 is checked before anything is extracted, and extraction goes to a temporary folder that
    replaces nothing until it is complete, so a bad archive leaves existing files alone. A failed download
    leaves nothing behind, not even the folders it created for it.
    """
    spec = dataset_spec(dataset)
    url, md5, need = url or spec.url, md5 or spec.md5, spec.files if need is None else need
    data_dir = Path(data_dir)
    folder = data_dir / spec.folder
    if _have_batches(folder, need):
        return folder
    archive = data_dir / spec.archive
    again = spec.download
    if not archive.exists():
        created = [p for p in (data_dir, *data_dir.parents) if not p.exists()]  # deepest first
        data_dir.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(spec.archive + ".part")
        try:
            _fetch(url, partial, spec.name)
        except (urllib.error.URLError, OSError) as e:
            partial.unlink(missing_ok=True)
            for p in created:
                with contextlib.suppress(OSError):  # never hides the error below
                    p.rmdir()
            raise DataError(
                f"{spec.name} is not in {folder} and could not be downloaded from {url} ({e}). "
                f"Run {again} with {field('data_dir', str(data_dir))} where there is internet, or fetch the archive "
                f"by hand (MD5 {md5}) and put it at {archive}; it is extracted on the next run. If {spec.name} is "
                f"elsewhere, point {field('data_dir')} at the folder holding {spec.folder}/.") from e
        os.replace(partial, archive)
    actual = md5sum(archive)
    if actual != md5:
        raise DataError(f"{archive} has MD5 {actual}, expected {md5}: the download is incomplete or not the "
                        f"{spec.name} python archive. Delete it and run {again} again; nothing was extracted.")
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".extract-") as tmp:
        _safe_extract(archive, tmp, again)
        if not _have_batches(Path(tmp) / spec.folder, spec.files):
            raise DataError(f"{archive} does not contain {spec.folder}/ with {', '.join(spec.files)}")
        if folder.exists():
            shutil.rmtree(folder)  # an incomplete earlier extraction: the batches were checked missing above
        os.replace(Path(tmp) / spec.folder, folder)
    return folder


class _BatchUnpickler(pickle.Unpickler):
    """Allows only the globals a CIFAR batch contains, so a crafted pickle cannot run code."""

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
                f"it was pickled by Python 3 (it calls {module}.{name}), and CIFAR batches are Python 2 cPickle "
                "files (protocol 2, byte strings), as in the official archives: use the official files "
                "(`python -m hw2 download`), or write the batch dict with pickle.dump(batch, f, protocol=4)")
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _unpickle(path, spec):
    """A batch file's object, unpickled safely; a clear error naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path} is missing: run {spec.download}, or point {field('data_dir')} at the "
                        f"folder holding {spec.folder}/") from None
    except Exception as e:  # any unpickling failure: truncated, crafted, not a pickle
        raise DataError(f"{path} is not a readable {spec.name} batch ({type(e).__name__}: {e})") from e
    return batch


def read_batch(path, dataset="cifar10"):
    """One batch file -> (pixels uint8 [N, 3072], labels int64 [N]); a clear error naming the file otherwise."""
    path, spec = Path(path), dataset_spec(dataset)
    batch = _unpickle(path, spec)
    key = spec.label_key
    if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path} is not a {spec.name} batch: expected keys b'data' and {key}, found {keys}")
    data, labels = batch[b"data"], np.asarray(batch[key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{getattr(data, 'dtype', type(data))} {getattr(data, 'shape', None)}"
        raise DataError(f"{path}: b'data' should be a uint8 array [N, 3072], found {found}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: expected {len(data)} integer labels, found {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(spec.classes)):
        raise DataError(f"{path}: labels must be in 0-{len(spec.classes) - 1}, found {labels.min()}..{labels.max()}")
    return data, labels.astype(np.int64)


def load_data(data_dir="data", dataset="cifar10"):
    """Read the data set's folder in data_dir -> x_train [50000, 3072] uint8, y_train [50000] int64,
    x_test [10000, 3072], y_test [10000]."""
    spec = dataset_spec(dataset)
    train = [read_batch(Path(data_dir) / spec.folder / name, dataset) for name in spec.train]
    x_test, y_test = load_test_data(data_dir, dataset)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def load_test_data(data_dir="data", dataset="cifar10"):
    """Read the test batch alone (cifar-10-batches-py/test_batch, cifar-100-python/test) -> x_test [10000, 3072]
    uint8, y_test [10000] int64: testing needs nothing else, so a damaged training batch does not stop it."""
    spec = dataset_spec(dataset)
    return read_batch(Path(data_dir) / spec.folder / spec.test, dataset)


def class_names(dataset="cifar10", data_dir=None):
    """The class names of `dataset`, indexed by label: CIFAR-10's fixed list, CIFAR-100's 100 fine labels. With
    data_dir, the names are read from that copy's meta file (CIFAR-100's `meta`), and a copy whose meta does
    not name the built-in classes in their order is a DataError: its labels would mean other classes."""
    spec = dataset_spec(dataset)
    if data_dir is None or not spec.meta:
        return list(spec.classes)
    path = Path(data_dir) / spec.folder / spec.meta
    meta = _unpickle(path, spec)
    names = meta.get(spec.names_key) if isinstance(meta, dict) else None
    try:
        names = [name.decode() for name in names]
    except (TypeError, AttributeError, UnicodeDecodeError):
        raise DataError(f"{path} is not {spec.name}'s meta file: expected a dict whose {spec.names_key} is a list "
                        f"of {len(spec.classes)} byte strings") from None
    if names != spec.classes:
        raise DataError(f"{path} names the classes {names[:3]}... ({len(names)}), not {spec.name}'s in the order "
                        f"of the official files; its labels would mean other classes: use the official archive "
                        f"({spec.download})")
    return names


def data_label(data_dir="data", dataset="cifar10"):
    """What the figures should call the data in data_dir: the official files (byte for byte), the JPEG
    stand-in of CIFAR-10 (by its test images' names), or another copy."""
    spec = dataset_spec(dataset)
    path = Path(data_dir) / spec.folder / spec.test
    if md5sum(path) == spec.test_md5:
        return spec.name
    if spec is DATASETS["cifar10"]:
        batch = _unpickle(path, spec)
        names = batch.get(b"filenames") if isinstance(batch, dict) else None
        if hashlib.md5(repr(names).encode()).hexdigest() == STANDIN_TEST_NAMES_MD5:
            return "CIFAR-10 (JPEG stand-in)"
    return f"{spec.name} (unofficial copy)"


def train_valid_split(x, y, valid_size=5000, seed=0):
    """Shuffled, seeded split -> (x_train, y_train, x_valid, y_valid). valid_size=0 keeps everything for training."""
    if not 0 <= valid_size < len(x):
        raise ValueError(f"valid_size must be in [0, {len(x)}), got {valid_size}")
    order = np.random.default_rng(seed).permutation(len(x))
    train, valid = order[valid_size:], order[:valid_size]
    return x[train], y[train], x[valid], y[valid]


TRAINING_IMAGES = 50000  # of CIFAR-10 and of CIFAR-100 alike, before the validation split


def steps_per_epoch(config, images=TRAINING_IMAGES):
    """The SGD steps in one epoch of `config` on one process: its training split (less valid_size, at most
    train_subset) in whole batches, as hw2.augment.Loader deals them."""
    images -= config.valid_size
    if config.train_subset:
        images = min(images, config.train_subset)
    return images // config.batch_size

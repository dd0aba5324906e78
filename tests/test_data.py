import dataclasses
import hashlib
import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from hw2.data import (BATCH_DIR, CIFAR100_CLASSES, CLASSES, DATASETS, TEST_BATCH, DataError, class_names, data_label,
                      download, load_data, load_test_data, md5sum, read_batch, train_valid_split)
from hw2.errors import ConfigError
from conftest import py2_pickle, synthetic_batch, synthetic_cifar100

# test_batch as ../shared/data/make_cifar10.py writes it with pillow 13.0 and numpy 2.4 (../shared/data/README.md):
# its pixels are decoded JPEGs, so another pillow, or numpy, may write other bytes.
STANDIN_TEST_MD5 = "79676a833a3397004ae3dc81cc7f2d25"
STANDIN_MD5_VERSIONS = {"pillow": "13.0", "numpy": "2.4"}


def tar_with(path, members):
    """A tar.gz with the given (TarInfo, bytes-or-None) members -> (path, md5)."""
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path, hashlib.md5(Path(path).read_bytes()).hexdigest()


def make_archive(path, folder):
    """tar.gz of folder/cifar-10-batches-py -> (path, md5)."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(Path(folder) / BATCH_DIR, arcname=BATCH_DIR)
    return path, hashlib.md5(Path(path).read_bytes()).hexdigest()


def test_download_fetches_checks_and_extracts_once(tmp_path, http_server, cifar_dir):
    url, www, requests = http_server
    _, md5 = make_archive(www / "cifar.tar.gz", cifar_dir)
    folder = download(tmp_path / "data", url=f"{url}/cifar.tar.gz", md5=md5)
    assert folder == tmp_path / "data" / BATCH_DIR
    x_train, y_train, x_test, y_test = load_data(tmp_path / "data")
    assert x_train.shape == (200, 3072) and x_test.shape == (40, 3072)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert len(requests) == 1
    download(tmp_path / "data", url=f"{url}/cifar.tar.gz", md5=md5)
    assert len(requests) == 1, "data already there: nothing is fetched again"


def test_wrong_md5_extracts_nothing_and_keeps_good_files(tmp_path, http_server, cifar_dir):
    url, www, _ = http_server
    make_archive(www / "cifar.tar.gz", cifar_dir)
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="MD5"):
        download(data, url=f"{url}/cifar.tar.gz", md5="0" * 32)
    assert not (data / BATCH_DIR).exists()
    assert (data / "notes.txt").read_text() == "mine"


def test_truncated_archive_is_a_clear_error(tmp_path, cifar_dir):
    archive, _ = make_archive(tmp_path / "full.tar.gz", cifar_dir)
    data = tmp_path / "data"
    data.mkdir()
    truncated = data / "cifar-10-python.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:5000])
    md5 = hashlib.md5(truncated.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="truncated or corrupt"):
        download(data, url="http://127.0.0.1:9/unused", md5=md5)
    assert not (data / BATCH_DIR).exists()


@pytest.mark.parametrize("name,kind", [("/tmp/evil", tarfile.REGTYPE), ("cifar-10-batches-py/../../evil", tarfile.REGTYPE),
                                       ("cifar-10-batches-py/link", tarfile.SYMTYPE)])
def test_unsafe_archive_members_are_refused(tmp_path, name, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    payload = None
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    else:
        payload = b"x"
        info.size = 1
    data = tmp_path / "a" / "b" / "data"
    data.mkdir(parents=True)
    _, md5 = tar_with(data / "cifar-10-python.tar.gz", [(info, payload)])
    with pytest.raises(DataError, match="refusing"):
        download(data, md5=md5)
    assert not (tmp_path / "a" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not (data / BATCH_DIR).exists()


def test_no_network_names_the_download_command_and_the_archive_place_and_creates_nothing(tmp_path):
    data_dir = tmp_path / "not" / "there"
    with pytest.raises(DataError) as e:
        download(data_dir, url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    assert "python -m hw2 download" in str(e.value)
    assert str(data_dir / "cifar-10-python.tar.gz") in str(e.value)
    assert not list(tmp_path.iterdir()), "neither a partial download nor the folders made for it are left behind"


def test_manually_placed_archive_is_used(tmp_path, cifar_dir):
    _, md5 = make_archive(tmp_path / "cifar-10-python.tar.gz", cifar_dir)
    download(tmp_path, url="http://127.0.0.1:9/unreachable", md5=md5)
    assert load_data(tmp_path)[0].shape == (200, 3072)


def _write(path, obj):
    path.write_bytes(py2_pickle(obj))


@pytest.mark.parametrize("batch,message", [
    ({b"labels": [0]}, "expected keys"),
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"uint8 array \[N, 3072\]"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, "labels must be in 0-9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "expected 2 integer labels"),
])
def test_batches_that_are_not_cifar10_name_the_file(tmp_path, batch, message):
    _write(tmp_path / "data_batch_1", batch)
    with pytest.raises(DataError, match=message) as e:
        read_batch(tmp_path / "data_batch_1")
    assert "data_batch_1" in str(e.value)


def test_crafted_pickle_does_not_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    _write(tmp_path / "data_batch_1", {b"data": Exploit(), b"labels": []})
    with pytest.raises(DataError, match="data_batch_1.*not allowed"):
        read_batch(tmp_path / "data_batch_1")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_batch_pickled_by_python3_gets_a_hint_that_works(tmp_path, protocol):
    batch = synthetic_batch(5, 0)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
    with pytest.raises(DataError, match=r"data_batch_1 .*pickled by Python 3.*Python 2 cPickle.*protocol=4"):
        read_batch(tmp_path / "data_batch_1")
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=4))
    assert np.array_equal(read_batch(tmp_path / "data_batch_1")[0], batch[b"data"])


def test_reads_python2_style_pickles(tmp_path):
    """The official files are Python 2 cPickles: byte-string keys, numpy.core.multiarray globals."""
    batch = synthetic_batch(5, 0)
    raw = py2_pickle(batch)
    assert b"numpy.core.multiarray" in raw and b"_codecs" not in raw
    (tmp_path / "b").write_bytes(raw)
    x, y = read_batch(tmp_path / "b")
    assert np.array_equal(x, batch[b"data"]) and y.tolist() == batch[b"labels"]


def test_the_test_batch_is_read_and_downloaded_alone(tmp_path, cifar_dir):
    """A damaged or missing training batch stops training, not testing."""
    data_dir = tmp_path / "data"
    shutil.copytree(cifar_dir, data_dir)
    (data_dir / BATCH_DIR / "data_batch_2").write_bytes(b"damaged")
    (data_dir / BATCH_DIR / "data_batch_3").unlink()
    assert download(data_dir, url="http://127.0.0.1:9/unreachable", need=[TEST_BATCH]) == data_dir / BATCH_DIR
    x_test, y_test = load_test_data(data_dir)
    assert x_test.shape == (40, 3072) and y_test.shape == (40,)
    with pytest.raises(DataError, match="data_batch_2"):
        load_data(data_dir)


def test_real_cifar10_shapes_and_classes(real_data_dir):
    x_train, y_train, x_test, y_test = load_data(real_data_dir)
    assert x_train.shape == (50000, 3072) and y_train.shape == (50000,)
    assert x_test.shape == (10000, 3072) and y_test.shape == (10000,)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert np.bincount(y_train).tolist() == [5000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10


def test_split_is_shuffled_seeded_and_disjoint():
    x = np.arange(1000).reshape(1000, 1)
    y = np.arange(1000) % 10
    xt, yt, xv, yv = train_valid_split(x, y, valid_size=100, seed=0)
    assert len(xt) == 900 and len(xv) == 100
    assert sorted(np.concatenate([xt, xv]).ravel().tolist()) == list(range(1000))
    assert xv.ravel().tolist() != list(range(900, 1000)), "not the unshuffled last 5,000"
    assert np.array_equal(train_valid_split(x, y, 100, seed=0)[2], xv)
    assert not np.array_equal(train_valid_split(x, y, 100, seed=1)[2], xv)
    assert np.array_equal(yv, xv.ravel() % 10), "labels follow their images"


def test_data_label_tells_the_official_files_from_the_stand_in(cifar_dir, real_data_dir):
    assert data_label(cifar_dir) == "CIFAR-10 (unofficial copy)"
    assert data_label(real_data_dir) in ("CIFAR-10", "CIFAR-10 (JPEG stand-in)")


def standin_test_batch(real_data_dir):
    """The stand-in's test batch dict (skips where data/ holds the official files)."""
    if data_label(real_data_dir) != "CIFAR-10 (JPEG stand-in)":
        pytest.skip("data/ holds the official CIFAR-10, not the stand-in")
    with open(real_data_dir / BATCH_DIR / TEST_BATCH, "rb") as f:
        return pickle.load(f, encoding="bytes")


def test_the_stand_in_is_known_by_its_image_names_not_its_pixels(real_data_dir, tmp_path):
    batch = standin_test_batch(real_data_dir)
    (tmp_path / BATCH_DIR).mkdir()
    batch[b"data"] = batch[b"data"].copy()
    batch[b"data"][0, 0] ^= 1  # as another JPEG decoder might write it
    (tmp_path / BATCH_DIR / TEST_BATCH).write_bytes(py2_pickle(batch))
    assert data_label(tmp_path) == "CIFAR-10 (JPEG stand-in)"
    batch[b"filenames"] = batch[b"filenames"][::-1]
    (tmp_path / BATCH_DIR / TEST_BATCH).write_bytes(py2_pickle(batch))
    assert data_label(tmp_path) == "CIFAR-10 (unofficial copy)"


def test_the_stand_in_has_the_pixels_pinned_for_pillow_13_0_and_numpy_2_4(real_data_dir):
    standin_test_batch(real_data_dir)
    pil = pytest.importorskip("PIL")
    found = {"pillow": pil.__version__, "numpy": np.__version__}
    if any(not found[name].startswith(version + ".") for name, version in STANDIN_MD5_VERSIONS.items()):
        pytest.skip(f"the pinned MD5 is the stand-in written with pillow {STANDIN_MD5_VERSIONS['pillow']} and numpy "
                    f"{STANDIN_MD5_VERSIONS['numpy']}; here are pillow {found['pillow']} and numpy {found['numpy']}")
    assert md5sum(real_data_dir / BATCH_DIR / TEST_BATCH) == STANDIN_TEST_MD5, (
        f"pillow {found['pillow']} and numpy {found['numpy']} should decode the stand-in's JPEGs to the pixels pinned "
        "(if data/ was written elsewhere, rewrite it: python ../shared/data/make_cifar10.py data)")


CIFAR100 = DATASETS["cifar100"]


def test_cifar100_is_read_from_the_official_layout_with_its_fine_labels(cifar100_dir):
    x_train, y_train, x_test, y_test = load_data(cifar100_dir, dataset="cifar100")
    assert x_train.shape == (200, 3072) and x_test.shape == (200, 3072) and x_train.dtype == np.uint8
    assert np.bincount(y_train).tolist() == [2] * 100 and y_test.dtype == np.int64
    with open(cifar100_dir / "cifar-100-python" / "train", "rb") as f:
        official = pickle.load(f, encoding="bytes")
    assert y_train.tolist() == official[b"fine_labels"] != official[b"coarse_labels"]
    assert np.array_equal(load_test_data(cifar100_dir, "cifar100")[0], x_test)
    assert class_names("cifar100", cifar100_dir) == class_names("cifar100") == CIFAR100_CLASSES
    assert len(set(CIFAR100_CLASSES)) == 100 and CIFAR100_CLASSES == sorted(CIFAR100_CLASSES)
    assert class_names() == CLASSES and data_label(cifar100_dir, "cifar100") == "CIFAR-100 (unofficial copy)"


def make_cifar100_archive(path, folder):
    """tar.gz of folder/cifar-100-python -> (path, md5)."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(Path(folder) / CIFAR100.folder, arcname=CIFAR100.folder)
    return path, hashlib.md5(Path(path).read_bytes()).hexdigest()


def test_cifar100_download_fetches_checks_and_extracts_once(tmp_path, http_server, cifar100_dir, monkeypatch):
    url, www, requests = http_server
    _, md5 = make_cifar100_archive(www / CIFAR100.archive, cifar100_dir)
    local = dataclasses.replace(CIFAR100, url=f"{url}/{CIFAR100.archive}", md5=md5)  # the official one, served here
    monkeypatch.setitem(DATASETS, "cifar100", local)
    data = tmp_path / "data"
    assert download(data, dataset="cifar100") == data / "cifar-100-python"
    assert sorted(p.name for p in (data / "cifar-100-python").iterdir()) == ["meta", "test", "train"]
    assert load_data(data, "cifar100")[0].shape == (200, 3072) and class_names("cifar100", data) == CIFAR100_CLASSES
    assert len(requests) == 1 and (data / CIFAR100.archive).is_file()
    download(data, dataset="cifar100")
    assert len(requests) == 1, "data already there: nothing is fetched again"
    assert not (data / BATCH_DIR).exists(), "CIFAR-10 was not asked for"


def test_cifar100_wrong_md5_extracts_nothing(tmp_path, http_server, cifar100_dir):
    url, www, _ = http_server
    make_cifar100_archive(www / CIFAR100.archive, cifar100_dir)
    with pytest.raises(DataError, match=r"cifar-100-python.tar.gz has MD5 \w+, expected 0{32}: the download is "
                                        r"incomplete or not the CIFAR-100 python archive\. Delete it and run "
                                        r"`python -m hw2 download --dataset cifar100` again; nothing was extracted"):
        download(tmp_path / "data", url=f"{url}/{CIFAR100.archive}", md5="0" * 32, dataset="cifar100")
    assert [p.name for p in (tmp_path / "data").iterdir()] == [CIFAR100.archive]


def test_an_archive_without_the_cifar100_files_is_refused(tmp_path, cifar_dir):
    _, md5 = make_archive(tmp_path / CIFAR100.archive, cifar_dir)  # CIFAR-10's folder under CIFAR-100's name
    with pytest.raises(DataError, match="does not contain cifar-100-python/ with train, test, meta"):
        download(tmp_path, md5=md5, dataset="cifar100")
    assert not (tmp_path / CIFAR100.folder).exists()


def test_missing_cifar100_names_its_folder_and_download_command(tmp_path):
    with pytest.raises(DataError, match=r"cifar-100-python/test is missing: run `python -m hw2 download --dataset "
                                        r"cifar100`, or point data_dir at the folder holding cifar-100-python/$"):
        load_test_data(tmp_path, "cifar100")
    with pytest.raises(ConfigError, match="dataset must be 'cifar10' or 'cifar100'; got 'cifar1000'"):
        load_data(tmp_path, "cifar1000")


def cifar100_batch(changes):
    """One image of each class as the official `train` is, with `changes`."""
    return {**synthetic_cifar100(1, 0), **changes}


@pytest.mark.parametrize("batch,message", [
    (cifar100_batch({b"fine_labels": list(range(1, 101))}), "labels must be in 0-99, found 1..100"),
    (cifar100_batch({b"fine_labels": [0, 1]}), "expected 100 integer labels"),
    (cifar100_batch({b"data": np.zeros((100, 1024), np.uint8)}), r"uint8 array \[N, 3072\], found uint8 \(100, 1024\)"),
    (synthetic_batch(5, 0), "is not a CIFAR-100 batch: expected keys b'data' and b'fine_labels', found "),
])
def test_batches_that_are_not_cifar100_name_the_file(tmp_path, batch, message):
    _write(tmp_path / "train", batch)
    with pytest.raises(DataError, match=message) as e:
        read_batch(tmp_path / "train", "cifar100")
    assert str(tmp_path / "train") in str(e.value)


@pytest.mark.parametrize("meta,message", [
    ({b"fine_label_names": [n.encode() for n in reversed(CIFAR100_CLASSES)]}, r"names the classes \['worm'"),
    ({b"coarse_label_names": [b"x"]}, r"not CIFAR-100's meta file: expected a dict whose b'fine_label_names' is"),
])
def test_a_meta_file_that_does_not_name_cifar100s_classes_in_order_is_refused(tmp_path, meta, message):
    (tmp_path / "cifar-100-python").mkdir()
    _write(tmp_path / "cifar-100-python" / "meta", meta)
    with pytest.raises(DataError, match=message):
        class_names("cifar100", tmp_path)

"""Image protocols (fashion-mnist, cifar10 x3, nus-wide, coco) on tiny generated files, and the
image containers they return. No network: downloads go through a monkeypatched opener."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hashbench
from hashbench.data import cifar10 as cifar_module
from hashbench.data import fashion_mnist as fm
from hashbench.data import roots
from hashbench.data.images import ImageFiles, image_count, iter_image_batches
from hashbench.errors import HashbenchError

SMALL = {"queries_per_class": 2, "train_per_class": 3, "val_per_class": 1}


@pytest.fixture(autouse=True)
def _isolated_data(monkeypatch, tmp_path):
    """No test sees the real data or cache unless it asks; downloads fail unless patched."""
    monkeypatch.delenv(roots.DATA_ENV, raising=False)
    monkeypatch.setenv(roots.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(fm.FashionMNIST, "system_dirs", ())

    def offline(url, timeout=60.0):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(roots, "open_url", offline)


def _check_balanced(splits, per_class: dict[str, int], classes: int = 10) -> None:
    for name, n in per_class.items():
        assert np.bincount(getattr(splits, name).labels, minlength=classes).tolist() == [n] * classes, name


# ----------------------------------------------------------------------------- fashion-mnist

def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(folder: Path, gz: bool, n_train: int = 40, n_test: int = 20, seed: int = 0):
    """Tiny idx files (labels cycle 0..9) in ``folder``; returns all images and labels in id order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x = rng.integers(0, 256, size=(n_train + n_test, 28, 28), dtype=np.uint8)
    y = np.arange(n_train + n_test) % 10
    parts = {
        "train-images-idx3-ubyte": (x[:n_train], 0x0803), "train-labels-idx1-ubyte": (y[:n_train], 0x0801),
        "t10k-images-idx3-ubyte": (x[n_train:], 0x0803), "t10k-labels-idx1-ubyte": (y[n_train:], 0x0801),
    }
    for name, (array, magic) in parts.items():
        data = _idx_bytes(array, magic)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return x, y


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_fashion_mnist_tiny(tmp_path, monkeypatch, gz):
    x, y = _write_fashion(tmp_path / "fashion-mnist", gz)
    monkeypatch.setenv("HASHBENCH_DATA", str(tmp_path))
    protocol = hashbench.create("dataset", "fashion-mnist", **SMALL)
    assert protocol.provides == ("images",) and protocol.topk == 1000 and not protocol.multi_label
    splits = protocol.load()
    assert splits.sizes() == {"train": 30, "val": 10, "query": 20, "database": 40}
    splits.check_disjoint(protocol.disjoint, "fashion-mnist")
    _check_balanced(splits, {"query": 2, "train": 3, "val": 1, "database": 4})
    db = set(splits.database.index.tolist())
    assert set(splits.train.index.tolist()) <= db and set(splits.val.index.tolist()) <= db
    assert not set(splits.val.index.tolist()) & set(splits.train.index.tolist())
    for split in (splits.query, splits.database):
        assert split.x.dtype == np.uint8 and split.x.shape[1:] == (28, 28)
        assert np.array_equal(split.x, x[split.index]) and np.array_equal(split.labels, y[split.index])
    assert splits.database.index.dtype == np.int64
    assert protocol.describe()["source"] == str(tmp_path / "fashion-mnist")

    again = hashbench.create("dataset", "fashion-mnist", **SMALL).load()
    assert all(np.array_equal(getattr(again, s).index, getattr(splits, s).index) for s in ("train", "val", "query"))
    other = hashbench.create("dataset", "fashion-mnist", split_seed=1, **SMALL).load()
    assert not np.array_equal(other.query.index, splits.query.index)

    print_before = protocol.fingerprint()
    assert print_before == protocol.fingerprint() and len(print_before) == 16
    _write_fashion(tmp_path / "fashion-mnist", gz, n_train=50)
    assert protocol.fingerprint() != print_before


def test_fashion_mnist_corrupt_files(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    _write_fashion(folder, gz=False)
    monkeypatch.setenv("HASHBENCH_DATA", str(tmp_path))
    labels = folder / "train-labels-idx1-ubyte"
    good = labels.read_bytes()
    labels.write_bytes(good[:-3])
    with pytest.raises(HashbenchError, match=r"train-labels-idx1-ubyte: idx file declares shape \(40,\).*truncated or corrupt"):
        hashbench.create("dataset", "fashion-mnist", **SMALL).load()
    labels.write_bytes(b"\x00\x00\x08\x03" + good[4:])
    with pytest.raises(HashbenchError, match=r"magic number 0x00000803, expected 0x00000801"):
        hashbench.create("dataset", "fashion-mnist", **SMALL).load()
    labels.unlink()
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(good)[:30])
    with pytest.raises(HashbenchError, match=r"unreadable idx file") as info:
        hashbench.create("dataset", "fashion-mnist", **SMALL).load()
    assert "\n" not in str(info.value)


def test_fashion_mnist_downloads_into_the_cache(tmp_path, monkeypatch):
    source = tmp_path / "server"
    x, _ = _write_fashion(source, gz=True)
    served = []

    def fake_open(url, timeout=60.0):
        served.append(url)
        return io.BytesIO((source / url.rsplit("/", 1)[-1]).read_bytes())

    monkeypatch.setattr(roots, "open_url", fake_open)
    for name, (magic, _, size) in fm.FILES.items():
        md5 = hashlib.md5((source / f"{name}.gz").read_bytes()).hexdigest()
        monkeypatch.setitem(fm.FILES, name, (magic, md5, size))
    protocol = hashbench.create("dataset", "fashion-mnist", **SMALL)
    splits = protocol.load()
    cache = tmp_path / "cache" / "data" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in fm.FILES)  # no partial files
    assert len(served) == 4 and all(u.startswith(fm.URL) for u in served)
    assert np.array_equal(splits.query.x, x[splits.query.index])
    protocol.load()
    assert len(served) == 4  # found in the cache the second time

    for p in cache.iterdir():
        p.unlink()
    monkeypatch.setitem(fm.FILES, "train-images-idx3-ubyte", (0x0803, "0" * 32, 0))
    with pytest.raises(HashbenchError, match=r"Automatic download from .* failed: .*md5"):
        hashbench.create("dataset", "fashion-mnist", **SMALL).load()
    assert not any(p.name.startswith("train-images") for p in cache.iterdir())


def test_not_found_errors_name_every_way(tmp_path, monkeypatch):
    monkeypatch.setenv("HASHBENCH_DATA", str(tmp_path / "nothing"))
    expected = {
        "fashion-mnist": ["apt-get install dataset-fashion-mnist", "train-images-idx3-ubyte.gz",
                          "t10k-labels-idx1-ubyte.gz", "Automatic download", "no network in tests"],
        "cifar10": ["cifar-10-python.tar.gz", "cifar-10-batches-py"],
        "cifar10-cibhash": ["cifar-10-python.tar.gz"],
        "nus-wide": ["train.txt", "test.txt", "database.txt", "l_20"],
        "coco": ["train.txt", "test.txt", "database.txt", "l_79"],
    }
    for name, words in expected.items():
        with pytest.raises(HashbenchError) as info:
            hashbench.create("dataset", name).load()
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{name}: data not found")
        for word in [*words, "--data-root DIR", "HASHBENCH_DATA=DIR", "HASHBENCH_CACHE", str(tmp_path / "nothing")]:
            assert word in message, (name, word, message)


@pytest.mark.skipif(not fm.SYSTEM_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(fm.FashionMNIST, "system_dirs", (fm.SYSTEM_DIR,))
    protocol = hashbench.create("dataset", "fashion-mnist")
    t0 = time.perf_counter()
    splits = protocol.load()
    seconds = time.perf_counter() - t0
    assert splits.sizes() == {"train": 5000, "val": 1000, "query": 1000, "database": 69000}
    assert protocol.topk == 1000
    splits.check_disjoint(protocol.disjoint, "fashion-mnist")
    _check_balanced(splits, {"query": 100, "train": 500, "val": 100})
    assert splits.database.x.shape == (69000, 28, 28) and splits.database.x.dtype == np.uint8
    assert protocol.describe()["source"] == str(fm.SYSTEM_DIR)
    assert seconds < 5.0, f"loading took {seconds:.2f} s (expected ~0.5 s)"


# ----------------------------------------------------------------------------- cifar-10

def _cifar_batches(seed: int = 0, per_batch: int = 10, n_test: int = 20):
    """Five data batches of ``per_batch`` images and a test batch; labels cycle 0..9."""
    rng = np.random.default_rng(seed)
    batches = {}
    for i, name in enumerate(cifar_module.BATCHES):
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        batches[name] = {b"batch_label": f"batch {i}".encode(), b"labels": [int(j % 10) for j in range(n)],
                         b"data": data, b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)]}
    return batches


def _write_cifar(target: Path, batches, archive: bool) -> None:
    target.mkdir(parents=True, exist_ok=True)
    blobs = {name: pickle.dumps(batch, protocol=2) for name, batch in batches.items()}
    blobs["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2)
    if archive:
        with tarfile.open(target / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, blob in blobs.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        folder = target / "cifar-10-batches-py"
        folder.mkdir()
        for name, blob in blobs.items():
            (folder / name).write_bytes(blob)


@pytest.mark.parametrize("archive", [True, False], ids=["tar.gz", "folder"])
def test_cifar10_variants(tmp_path, monkeypatch, archive):
    batches = _cifar_batches()
    # a known pixel: image 3 of data_batch_2 (id 13), row 5, column 7, green = 1,024 + 5 * 32 + 7
    batches["data_batch_2"][b"data"][3, 1024 + 5 * 32 + 7] = 201
    # the archive in DIR/cifar10/, the extracted folder directly in DIR: both places are searched
    _write_cifar(tmp_path / "cifar10" if archive else tmp_path, batches, archive)
    monkeypatch.setenv("HASHBENCH_DATA", str(tmp_path))
    data = np.concatenate([b[b"data"] for b in batches.values()])
    labels = np.concatenate([b[b"labels"] for b in batches.values()])

    protocol = hashbench.create("dataset", "cifar10", **SMALL)
    splits = protocol.load()
    assert splits.sizes() == {"train": 30, "val": 10, "query": 20, "database": 50}
    splits.check_disjoint(protocol.disjoint, "cifar10")
    _check_balanced(splits, {"query": 2, "train": 3, "val": 1, "database": 5})
    assert set(splits.train.index.tolist()) <= set(splits.database.index.tolist())
    db = splits.database
    assert db.x.shape[1:] == (32, 32, 3) and db.x.dtype == np.uint8
    assert np.array_equal(db.x, data[db.index].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert np.array_equal(db.labels, labels[db.index])
    x_all = np.concatenate([getattr(splits, s).x for s in ("query", "database")])
    ids = np.concatenate([getattr(splits, s).index for s in ("query", "database")])
    pixel = x_all[np.flatnonzero(ids == 13)[0]]
    assert pixel[5, 7, 1] == 201 and pixel[5, 7, 1] == data[13, 1024 + 5 * 32 + 7]
    source = protocol.describe()["source"]
    assert source.endswith("cifar-10-python.tar.gz" if archive else "cifar-10-batches-py")
    assert len(protocol.fingerprint()) == 16
    assert protocol.published["itq"] == {16: 0.305, 32: 0.325, 64: 0.349} and protocol.published_source
    other = hashbench.create("dataset", "cifar10", split_seed=1, **SMALL).load()
    assert not np.array_equal(other.query.index, splits.query.index)

    p54 = hashbench.create("dataset", "cifar10-1k54k", **SMALL)
    s54 = p54.load()
    assert s54.sizes() == {"train": 30, "val": 10, "query": 20, "database": 20}
    s54.check_disjoint(p54.disjoint, "cifar10-1k54k")
    assert ("train", "database") in p54.disjoint and set(s54.val.index.tolist()) <= set(s54.database.index.tolist())

    pcib = hashbench.create("dataset", "cifar10-cibhash", queries_per_class=1, val_per_class=1, train_per_class=3)
    scib = pcib.load()
    assert scib.sizes() == {"train": 30, "val": 10, "query": 10, "database": 50}
    scib.check_disjoint(pcib.disjoint, "cifar10-cibhash")
    assert np.array_equal(scib.database.index, np.arange(50))
    assert scib.query.index.min() >= 50 and scib.val.index.min() >= 50
    _check_balanced(scib, {"query": 1, "val": 1, "train": 3, "database": 5})
    assert hashbench.create("dataset", "cifar10-cibhash").config.queries_per_class == 500


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_refuses_a_malicious_pickle(tmp_path, monkeypatch):
    batches = _cifar_batches()
    _write_cifar(tmp_path, batches, archive=False)
    marker = tmp_path / "pwned"
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(
        pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2))
    monkeypatch.setenv("HASHBENCH_DATA", str(tmp_path))
    with pytest.raises(HashbenchError, match=r"data_batch_3: refusing to load: global '(posix|os|nt)\.system' is not allowed"):
        hashbench.create("dataset", "cifar10", **SMALL).load()
    assert not marker.exists()


def test_cifar_batch_unpickler_reads_numpy_pickles():
    array = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    batch = {b"data": array, b"labels": [1, 2]}
    numpy1 = pickle.dumps(batch, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in numpy1  # as numpy 1.x / Python 2 wrote the real batches
    for blob in (numpy1, pickle.dumps(batch, protocol=4), pickle.dumps(batch, protocol=5)):
        x, y = cifar_module.load_batch(blob, "test")
        assert x.shape == (2, 32, 32, 3) and y.tolist() == [1, 2]
        assert x[1, 0, 1, 2] == array[1, 2048 + 1]
    with pytest.raises(HashbenchError, match=r"'data' must be a uint8 array \(n, 3072\)"):
        cifar_module.load_batch(pickle.dumps({b"data": array[:, :10], b"labels": [1, 2]}), "test")
    with pytest.raises(HashbenchError, match=r"refusing to load: global 'builtins.eval'"):
        cifar_module.load_batch(b"cbuiltins\neval\n(S'1'\ntR.", "test")


# ----------------------------------------------------------------------------- list files

def _write_image(path: Path, seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(6 + seed % 3, 5, 3), dtype=np.uint8)
    if path.suffix == ".png" and seed % 4 == 0:
        Image.fromarray(pixels[..., 0], mode="L").save(path)  # a grey PNG: read back as RGB
        return np.repeat(pixels[..., :1], 3, axis=2)
    Image.fromarray(pixels).save(path, quality=95)
    return pixels


def _write_lists(folder: Path, classes: int, n: int = 30, n_query: int = 6, n_train: int = 8,
                 image_dir: str = "", seed: int = 0):
    """``n`` images (PNG, every third JPEG): queries first, then the database (train = its head)."""
    rng = np.random.default_rng(seed)
    names = [f"img/{i:03d}.{'jpg' if i % 3 == 2 else 'png'}" for i in range(n)]
    labels = (rng.random((n, classes)) < 0.3).astype(np.uint8)
    labels[np.arange(n), np.arange(n) % classes] = 1
    pixels = {name: _write_image(folder / image_dir / name, i) for i, name in enumerate(names)}

    def lines(rows):
        return "".join(f"{names[i]} {' '.join(map(str, labels[i]))}\n" for i in rows)

    query, database = range(n_query), range(n_query, n)
    (folder / "test.txt").write_text(lines(query))
    (folder / "database.txt").write_text(lines(database))
    (folder / "train.txt").write_text(lines(range(n_query, n_query + n_train)))
    return names, labels, pixels


@pytest.mark.parametrize("name, classes, image_dir", [("nus-wide", 21, ""), ("coco", 80, "images")])
def test_list_file_protocols(tmp_path, monkeypatch, name, classes, image_dir):
    folder = tmp_path / name
    names, labels, pixels = _write_lists(folder, classes, image_dir=image_dir)
    monkeypatch.setenv("HASHBENCH_DATA", str(tmp_path))
    protocol = hashbench.create("dataset", name, val_size=5)
    assert protocol.multi_label and protocol.topk == 5000 and protocol.relevance == "shares >= 1 label"
    assert protocol.provides == ("images",) and protocol.published["cibhash"][16] > 0
    splits = protocol.load()
    assert splits.sizes() == {"train": 8, "val": 5, "query": 6, "database": 24}
    splits.check_disjoint(protocol.disjoint, name)
    # ids: one per distinct path, shared by the lists that name the same image
    assert np.array_equal(splits.train.index, splits.database.index[:8])
    assert len(np.unique(np.concatenate([splits.query.index, splits.database.index]))) == 30
    val = set(splits.val.index.tolist())
    assert val <= set(splits.database.index[8:].tolist())
    for split in (splits.query, splits.val, splits.database):
        assert isinstance(split.x, ImageFiles) and split.x.root == folder / image_dir
        assert split.labels.dtype == np.uint8 and split.labels.shape == (len(split), classes)
    for i in range(len(splits.val)):
        rel = splits.val.x.paths[i]
        assert np.array_equal(splits.val.labels[i], labels[names.index(rel)])
    png = next(i for i, p in enumerate(splits.query.x.paths) if p.endswith("000.png"))  # the grey one
    assert np.array_equal(splits.query.x[png], pixels[splits.query.x.paths[png]])
    jpg = next(i for i, p in enumerate(splits.database.x.paths) if p.endswith(".jpg"))
    image = splits.database.x[jpg]
    assert image.dtype == np.uint8 and image.shape == pixels[splits.database.x.paths[jpg]].shape
    assert protocol.describe()["source"] == str(folder)

    again = hashbench.create("dataset", name, val_size=5).load()
    assert np.array_equal(again.val.index, splits.val.index)
    seeds = {tuple(hashbench.create("dataset", name, val_size=5, split_seed=s).load().val.index) for s in range(4)}
    assert len(seeds) > 1
    assert len(hashbench.create("dataset", name).load().val) == 16  # val_size 1,000: all eligible

    fingerprint = protocol.fingerprint()
    assert fingerprint == hashbench.create("dataset", name).fingerprint()
    target = folder / image_dir / names[10]
    _write_image(target, 99)
    os.utime(target, ns=(1, 1))
    assert hashbench.create("dataset", name).fingerprint() != fingerprint


def test_list_file_missing_images_are_reported_before_training(tmp_path, monkeypatch):
    folder = tmp_path / "nus-wide"
    names, _, _ = _write_lists(folder, 21)
    for rel in (names[3], names[12], names[20]):
        (folder / rel).unlink()
    monkeypatch.setenv("HASHBENCH_DATA", str(tmp_path))
    with pytest.raises(HashbenchError) as info:
        hashbench.create("dataset", "nus-wide").load()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"nus-wide: 3 of 30 listed images are missing under {folder} (first: {names[3]}, {names[12]}, {names[20]})")


def test_list_file_malformed_lines(tmp_path, monkeypatch):
    folder = tmp_path / "coco"
    _write_lists(folder, 80)
    monkeypatch.setenv("HASHBENCH_DATA", str(tmp_path))
    good = (folder / "database.txt").read_text().splitlines()

    def database(lines):
        (folder / "database.txt").write_text("\n".join(lines) + "\n")
        with pytest.raises(HashbenchError) as info:
            hashbench.create("dataset", "coco").load()
        assert "\n" not in str(info.value)
        return str(info.value)

    short = good[2].rsplit(" ", 1)[0]
    assert database([*good[:2], short, *good[3:]]) == (
        f"{folder / 'database.txt'}:3: expected an image path and 80 labels (0/1), found 79 label fields")
    parts = good[1].split()
    parts[5] = "2"
    assert database([good[0], "", " ".join(parts), *good[2:]]) == (
        f"{folder / 'database.txt'}:3: label 4 is '2', expected 0 or 1")
    message = database([])
    assert message.startswith(f"{folder / 'database.txt'}: no entries")
    parts = good[4].split()
    parts[1] = "1" if parts[1] == "0" else "0"
    message = database([*good[:4], " ".join(parts), *good[5:]])
    assert message.startswith(f"{folder / 'database.txt'}:5: '{parts[0]}' has other labels than at train.txt:")


# ----------------------------------------------------------------------------- containers

def test_image_files_indexing_and_pickling(tmp_path):
    names = [f"{i}.png" for i in range(5)]
    pixels = [_write_image(tmp_path / n, i + 1) for i, n in enumerate(names)]
    files = ImageFiles(tmp_path, np.array(names))
    assert len(files) == 5 and image_count(files) == 5
    assert np.array_equal(files[2], pixels[2]) and files[2].dtype == np.uint8 and files[-1].shape[2] == 3
    subset = files[np.array([4, 0])]
    assert isinstance(subset, ImageFiles) and subset.paths.tolist() == ["4.png", "0.png"]
    assert files[1:3].paths.tolist() == ["1.png", "2.png"]
    assert files[np.array([True, False, True, False, False])].paths.tolist() == ["0.png", "2.png"]
    assert len(files[[]]) == 0
    clone = pickle.loads(pickle.dumps(subset))
    assert clone == subset and np.array_equal(clone[0], pixels[4])
    assert files.missing() == []
    (tmp_path / "3.png").unlink()
    assert files.missing() == ["3.png"]
    with pytest.raises(HashbenchError, match="cannot read image .*3.png"):
        files[3]
    with pytest.raises(TypeError, match="iter_image_batches"):
        np.asarray(files)


def test_iter_image_batches(tmp_path):
    array = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4)
    batches = list(iter_image_batches(array, 4))
    assert [len(b) for b in batches] == [4, 4, 2] and np.array_equal(np.concatenate(batches), array)
    assert image_count(array) == 10
    names = [f"{i}.png" for i in range(7)]
    pixels = [_write_image(tmp_path / n, i + 1) for i, n in enumerate(names)]
    files = ImageFiles(tmp_path, names)
    for workers in (1, 3):
        batches = list(iter_image_batches(files, 3, workers=workers))
        assert [len(b) for b in batches] == [3, 3, 1] and all(isinstance(b, list) for b in batches)
        flat = [image for batch in batches for image in batch]
        assert all(np.array_equal(a, b) for a, b in zip(flat, pixels))
    assert list(iter_image_batches(files[:0], 3)) == []
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_image_batches(array, 0))
    with pytest.raises(TypeError):
        list(iter_image_batches([array[0]], 2))


def test_image_protocols_are_registered():
    for name in ("fashion-mnist", "cifar10", "cifar10-1k54k", "cifar10-cibhash", "nus-wide", "coco"):
        cls = hashbench.registry.registry("dataset").get(name)
        assert cls.provides == ("images",) and cls.topk in (1000, 5000)
        assert ("query", "val") in cls.disjoint and ("val", "train") in cls.disjoint
        assert "split_seed" in cls.default_params()
        for bits in cls.published.values():
            assert sorted(bits) == [16, 32, 64]

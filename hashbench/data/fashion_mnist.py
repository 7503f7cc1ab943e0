"""Fashion-MNIST (Zalando): 70,000 28x28 grey images of 10 clothing classes, from idx files."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..components import Splits
from ..errors import HashbenchError
from . import roots
from .images import ImageProtocol
from .splits import PerClassConfig, standard_split

FOLDER = "fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian/Ubuntu: apt install dataset-fashion-mnist
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: idx file -> (magic number, md5 of the official .gz, uncompressed size)
FILES = {
    "train-images-idx3-ubyte": (0x0803, "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 47_040_016),
    "train-labels-idx1-ubyte": (0x0801, "25c81989df183df01b3e8a0aad5dffbe", 60_008),
    "t10k-images-idx3-ubyte": (0x0803, "bef4ecab320f06d8554ea6380940ec79", 7_840_016),
    "t10k-labels-idx1-ubyte": (0x0801, "bb300cfdad3c16e7a12a480ee83cd310", 10_008),
}
FILE_NAMES = ", ".join(f"{name}.gz" for name in FILES)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file (gzip or plain) as a read-only uint8 array of its declared shape.

    Checks the magic number (0x0801 labels, 0x0803 images: unsigned bytes, 1 or 3 dims) and that
    the payload has exactly the declared size; raises a one-line HashbenchError otherwise.
    """
    try:
        raw = Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise HashbenchError(f"{path}: unreadable idx file ({type(exc).__name__}: {exc}); replace the file") from exc
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        shown = "none" if found is None else f"0x{found:08x}"
        raise HashbenchError(f"{path}: not an idx file of this kind (magic number {shown}, expected 0x{magic:08x})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise HashbenchError(f"{path}: truncated idx header ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise HashbenchError(
            f"{path}: idx file declares shape {dims} ({expected} bytes) but has {len(raw)} bytes; "
            "the file is truncated or corrupt, replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _files_in(directory: Path) -> dict[str, Path] | None:
    """The four idx files in ``directory`` (plain preferred over .gz), or None if any is absent."""
    found = {}
    for name in FILES:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            return None
    return found


class FashionMNIST(ImageProtocol):
    """Fashion-MNIST, all 70,000 images (train 0..59,999 then t10k 60,000..69,999 = the ids).

    x: uint8 (N, 28, 28) grey; labels: int64 class ids 0..9; relevance: same class; K = 1000.
    Splits (seeded by ``split_seed``; defaults give these sizes), as the common CIFAR-10 protocol:
    query 1,000 (100/class) from all; train 5,000 (500/class) from the non-queries;
    database = all non-queries (69,000; includes train); val 1,000 (100/class) from the database
    minus train (val lies in the database, never in train or the queries).
    Data: ``$HASHBENCH_DATA/fashion-mnist/``, then ``/usr/share/datasets/fashion-mnist/``
    (``apt install dataset-fashion-mnist``), then the cache (downloaded there from the official
    URLs, md5-checked, when absent everywhere). File names: train-images-idx3-ubyte,
    train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each plain or .gz.
    """

    name = "fashion-mnist"
    summary = "Fashion-MNIST 28x28 grey: 1,000 queries, 5,000 train, 69,000 database, 1,000 val; mAP@1000"
    num_classes = 10
    multi_label = False
    topk = 1000
    relevance = "same class"
    disjoint = (("query", "database"), ("query", "train"), ("query", "val"), ("val", "train"))
    classes: ClassVar[tuple[str, ...]] = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )
    #: system folders searched after $HASHBENCH_DATA (tests empty this)
    system_dirs: ClassVar[tuple[Path, ...]] = (SYSTEM_DIR,)
    url: ClassVar[str] = URL

    Config = PerClassConfig

    def _search(self) -> list[Path]:
        return roots.search_dirs(FOLDER, self.system_dirs)

    def files(self, download: bool = True) -> dict[str, Path]:
        """The four idx files; downloads them into the cache when they are nowhere and ``download``."""
        searched = self._search()
        for directory in searched:
            found = _files_in(directory)
            if found is not None:
                return found
        ways = [
            "sudo apt-get install dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist)"
        ]
        files = f"{FILE_NAMES} (gz or not)"
        if not download:
            raise roots.not_found(self.name, FOLDER, files, searched, ways)
        cache = roots.data_cache_dir(FOLDER)
        try:
            for name, (_, md5, _) in FILES.items():
                target = cache / f"{name}.gz"
                if not (target.is_file() or (cache / name).is_file()):
                    roots.download(self.url + f"{name}.gz", target, md5=md5)
        except HashbenchError as exc:
            raise roots.not_found(self.name, FOLDER, files, searched, ways,
                                  note=f"Automatic download from {self.url} failed: {exc}") from exc
        found = _files_in(cache)
        assert found is not None
        return found

    def source(self) -> Path:
        return next(iter(self.files(download=False).values())).parent

    def fingerprint(self) -> str:
        return roots.stat_fingerprint(self.files().values())

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """All 70,000 images uint8 (N, 28, 28) and labels int64 (N,), train then test."""
        paths = self.files()
        parts = {name: read_idx(path, FILES[name][0]) for name, path in paths.items()}
        x_train, y_train = parts["train-images-idx3-ubyte"], parts["train-labels-idx1-ubyte"]
        x_test, y_test = parts["t10k-images-idx3-ubyte"], parts["t10k-labels-idx1-ubyte"]
        for images, labels, which in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
            if len(images) != len(labels):
                raise HashbenchError(
                    f"fashion-mnist: {which} has {len(images)} images but {len(labels)} labels "
                    f"({paths[f'{which}-images-idx3-ubyte'].parent})"
                )
        if x_train.shape[1:] != x_test.shape[1:]:
            raise HashbenchError(f"fashion-mnist: train images are {x_train.shape[1:]} but t10k images {x_test.shape[1:]}")
        y = np.concatenate([y_train, y_test]).astype(np.int64)
        if len(y) and y.max() >= self.num_classes:
            raise HashbenchError(f"fashion-mnist: label {y.max()} out of range 0..{self.num_classes - 1}")
        return np.concatenate([x_train, x_test]), y

    def load(self) -> Splits:
        x, y = self.read()
        train, val, query, database = standard_split(y, self.config)

        return Splits.from_ids(x, y, train, val, query, database)

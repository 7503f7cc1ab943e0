"""CIFAR-10 (60,000 32x32 RGB images, 10 classes) from the python-version archive, three protocols.

Reads ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/`` (pickled batches
``data_batch_1..5``, ``test_batch``) through a restricted unpickler that only rebuilds numpy
arrays. Ids: data_batch_1..5 are 0..49,999 in order, test_batch is 50,000..59,999.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..components import Splits
from ..errors import HashbenchError
from . import roots
from .images import ImageProtocol, published_by_bits
from .splits import PerClassConfig, per_class_sample, standard_split

FOLDER = "cifar10"
ARCHIVE = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
BATCHES = (*TRAIN_BATCHES, "test_batch")
HOME_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"


def _numpy_globals() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray, numeric

    return {
        # ndarray.__reduce__ (protocols 0-4): _reconstruct(ndarray, (0,), b"b") + __setstate__;
        # numpy 1.x spells the module numpy.core, numpy 2 numpy._core
        ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # protocol 5 pickles of contiguous arrays: _frombuffer(buffer, dtype, shape, order)
        ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,
        ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
        # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocols < 3
        ("_codecs", "encode"): codecs.encode,
    }


class BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch: dicts, lists, bytes, ints and numpy arrays; refuses any other global."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if BatchUnpickler._allowed is None:
            BatchUnpickler._allowed = _numpy_globals()
        try:
            return BatchUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch") from None


def load_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> images uint8 (n, 32, 32, 3) and labels int64 (n,).

    The pickle is read with :class:`BatchUnpickler` (``encoding="bytes"``, as the batches come
    from Python 2); a row of ``b"data"`` is 1,024 red, then green, then blue values, each plane
    row-major 32x32.
    """
    try:
        batch = BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise HashbenchError(f"{where}: refusing to load: {exc}") from exc
    except Exception as exc:  # truncated or not a pickle
        raise HashbenchError(f"{where}: not a readable CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict):
        raise HashbenchError(f"{where}: not a CIFAR-10 batch (a {type(batch).__name__}, expected a dict)")
    pixels = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
        shown = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise HashbenchError(f"{where}: 'data' must be a uint8 array (n, 3072), got {shown}")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise HashbenchError(f"{where}: 'labels' must be a list of ints ({exc})") from exc
    if len(y) != len(pixels):
        raise HashbenchError(f"{where}: {len(pixels)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise HashbenchError(f"{where}: labels must lie in 0..9, found {y.min()}..{y.max()}")
    x = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, y


def _read_folder(folder: Path) -> dict[str, bytes]:
    return {b: (folder / b).read_bytes() for b in BATCHES}


def _read_archive(path: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r|gz") as tar:  # one streaming pass; nothing is extracted
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in BATCHES and base not in found:
                    handle = tar.extractfile(member)
                    assert handle is not None
                    found[base] = handle.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise HashbenchError(f"{path}: unreadable archive ({type(exc).__name__}: {exc}); replace it") from exc
    absent = [b for b in BATCHES if b not in found]
    if absent:
        raise HashbenchError(f"{path}: archive lacks {', '.join(absent)}; expected the python version of CIFAR-10")
    return found


class _Cifar10(ImageProtocol):
    """Shared reading; subclasses define the split in ``split_ids``."""

    num_classes = 10
    multi_label = False
    topk = 1000
    relevance = "same class"
    classes: ClassVar[tuple[str, ...]] = (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    )

    Config = PerClassConfig

    def locate(self) -> Path:
        """The extracted ``cifar-10-batches-py`` folder (preferred) or the ``.tar.gz`` archive."""
        searched = roots.search_dirs(FOLDER, root_itself=True)
        for directory in searched:
            folder = directory / BATCH_DIR
            if all((folder / b).is_file() for b in BATCHES):
                return folder
            if (directory / ARCHIVE).is_file():
                return directory / ARCHIVE
        raise roots.not_found(
            self.name, FOLDER, f"{ARCHIVE} or its extracted folder {BATCH_DIR}/ (from {HOME_PAGE})", searched,
            note=f"DIR itself is searched too ({ARCHIVE} or {BATCH_DIR}/ directly in DIR)",
        )

    def source(self) -> Path:
        return self.locate()

    def fingerprint(self) -> str:
        where = self.locate()
        files = [where / b for b in BATCHES] if where.is_dir() else [where]
        return roots.stat_fingerprint(files)

    def read(self) -> tuple[np.ndarray, np.ndarray, int]:
        """All 60,000 images uint8 (N, 32, 32, 3), labels int64 (N,) in id order, and the number of
        training images (those from the data batches, ids before the test batch's)."""
        where = self.locate()
        raw = _read_folder(where) if where.is_dir() else _read_archive(where)
        parts = [load_batch(raw[b], f"{where}/{b}" if where.is_dir() else f"{where}:{b}") for b in BATCHES]
        x = np.concatenate([p[0] for p in parts])  # contiguous (N, 32, 32, 3)
        y = np.concatenate([p[1] for p in parts])
        return x, y, sum(len(p[1]) for p in parts[:-1])

    def split_ids(self, y: np.ndarray, n_train: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """(train, val, query, database) ids; ``n_train`` = items from the data batches."""
        raise NotImplementedError

    def load(self) -> Splits:
        x, y, n_train = self.read()
        rng = np.random.default_rng(self.config.split_seed)
        train, val, query, database = self.split_ids(y, n_train, rng)

        return Splits.from_ids(x, y, train, val, query, database)


_PUBLISHED = {
    "agh": (0.333, 0.357, 0.358), "itq": (0.305, 0.325, 0.349), "dgh": (0.335, 0.353, 0.361),
    "deepbit": (0.194, 0.249, 0.277), "sgh": (0.435, 0.437, 0.433), "bgan": (0.525, 0.531, 0.562),
    "bingan": (0.476, 0.512, 0.520), "greedyhash": (0.448, 0.473, 0.501), "hashgan": (0.447, 0.463, 0.481),
    "dvb": (0.403, 0.422, 0.446), "distillhash": (0.284, 0.285, 0.288), "tbh": (0.532, 0.573, 0.578),
    "mls3rduh": (0.369, 0.394, 0.412), "date": (0.577, 0.629, 0.647), "bihalf": (0.561, 0.576, 0.595),
    "cimon": (0.451, 0.472, 0.494), "cibhash": (0.590, 0.622, 0.641), "spq": (0.768, 0.793, 0.812),
    "nsh": (0.706, 0.733, 0.756), "wch": (0.897, 0.910, 0.932),
}


class Cifar10(_Cifar10):
    """CIFAR-10 "1k/59k" (the most common protocol; sdc, DeepHash-pytorch "cifar10-1").

    x: uint8 (N, 32, 32, 3) RGB; labels: int64 0..9; relevance: same class; K = 1000.
    Splits (seeded by ``split_seed``; defaults give these sizes): query 1,000 (100/class) from
    all 60,000; train 5,000 (500/class) from the rest; database = all 59,000 non-queries
    (includes train); val 1,000 (100/class) from the database minus train.
    Data: ``$HASHBENCH_DATA/cifar10/`` or ``$HASHBENCH_DATA``, then the cache: ``cifar-10-python.tar.gz``
    or ``cifar-10-batches-py/``.
    """

    name = "cifar10"
    summary = "CIFAR-10 1k/59k: 1,000 queries, 5,000 train, 59,000 database (incl. train), 1,000 val; mAP@1000"
    disjoint = (("query", "database"), ("query", "train"), ("query", "val"), ("val", "train"))
    published = published_by_bits(_PUBLISHED)
    published_source = (
        "NSH (IJCAI 2022) and WCH (ACCV 2022) tables (SPQ: WCH table only); rows were copied between "
        "papers that used different CIFAR-10 protocols (mostly 1k/59k), CNN methods use VGG-16 while "
        "WCH fine-tunes ViT-B/16; one public re-run of WCH's code reports .870/.889/.907"
    )

    def split_ids(self, y, n_train, rng):
        return standard_split(y, self.config)


class Cifar10_1k54k(_Cifar10):
    """CIFAR-10 "1k/54k" (WCH code, DeepHash-pytorch "cifar10"): the database excludes train.

    x: uint8 (N, 32, 32, 3) RGB; labels: int64 0..9; relevance: same class; K = 1000.
    Splits (seeded by ``split_seed``; defaults give these sizes): query 1,000 (100/class) from
    all 60,000; train 5,000 (500/class) from the rest; database = the other 54,000;
    val 1,000 (100/class) drawn from the database (so val lies in the database).
    No published numbers: the published tables mix protocols.
    """

    name = "cifar10-1k54k"
    summary = "CIFAR-10 1k/54k: 1,000 queries, 5,000 train, 54,000 database (train excluded), 1,000 val; mAP@1000"
    disjoint = (("query", "database"), ("query", "train"), ("query", "val"), ("train", "database"), ("val", "train"))

    def split_ids(self, y, n_train, rng):
        cfg = self.config
        everything = np.arange(len(y), dtype=np.int64)
        query = per_class_sample(y, everything, cfg.queries_per_class, rng)
        rest = np.setdiff1d(everything, query)
        train = per_class_sample(y, rest, cfg.train_per_class, rng)
        database = np.setdiff1d(rest, train)
        val = per_class_sample(y, database, cfg.val_per_class, rng)
        return train, val, query, database


class Cifar10CIBHash(_Cifar10):
    """CIFAR-10 as CIBHash's code splits it: the test set is the query + validation pool.

    x: uint8 (N, 32, 32, 3) RGB; labels: int64 0..9; relevance: same class; K = 1000.
    Splits (seeded by ``split_seed``; defaults give these sizes): the 10,000 test images split
    class-balanced into query 5,000 (500/class) and val 5,000 (500/class); train 5,000
    (500/class) from the 50,000 training images; database = the 50,000 training images
    (includes train). No published numbers attached (CIBHash's table mixes protocols).
    """

    name = "cifar10-cibhash"
    summary = "CIFAR-10 CIBHash code: 5,000 queries + 5,000 val (test set), 5,000 train, 50,000 database; mAP@1000"
    disjoint = (("query", "database"), ("query", "train"), ("query", "val"), ("val", "database"), ("val", "train"))

    @dataclass(frozen=True)
    class Config(PerClassConfig):
        """The per-class split parameters (and their limits) with this protocol's sizes."""

        queries_per_class: int = 500
        train_per_class: int = 500
        val_per_class: int = 500

    def split_ids(self, y, n_train, rng):
        cfg = self.config
        ids = np.arange(len(y), dtype=np.int64)
        training, test = ids[:n_train], ids[n_train:]
        query = per_class_sample(y, test, cfg.queries_per_class, rng)
        val = per_class_sample(y, np.setdiff1d(test, query), cfg.val_per_class, rng)
        train = per_class_sample(y, training, cfg.train_per_class, rng)
        return train, val, query, training

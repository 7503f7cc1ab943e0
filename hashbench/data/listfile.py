"""Multi-label image protocols given as DeepHash-pytorch list files: NUS-WIDE-21 and MS COCO.

A list file has one item per line, ``relative/image/path l_0 l_1 ... l_{C-1}`` (multi-hot 0/1,
whitespace-separated; blank lines are skipped). A protocol's folder holds ``train.txt``,
``test.txt`` (the queries) and ``database.txt``. Image paths resolve against that folder; if the
first listed path is not there but is under ``<folder>/images/``, every path resolves against
``<folder>/images/`` instead (one rule for the whole dataset).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from ..components import Split, Splits
from ..params import param
from ..errors import HashbenchError
from . import roots
from .images import ImageFiles, ImageProtocol, published_by_bits

LISTS = {"train": "train.txt", "query": "test.txt", "database": "database.txt"}


class ListFile(NamedTuple):
    paths: np.ndarray      # str (N,)
    labels: np.ndarray     # uint8 (N, C)
    lines: np.ndarray      # int64 (N,): 1-based line numbers, for messages


def read_list(path: Path, num_classes: int) -> ListFile:
    """Parse one list file; one-line HashbenchError (file:line) on a malformed line or no entries."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HashbenchError(f"{path}: unreadable list file ({exc})") from exc
    paths: list[str] = []
    fields: list[list[str]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != num_classes + 1:
            raise HashbenchError(
                f"{path}:{number}: expected an image path and {num_classes} labels (0/1), "
                f"found {len(parts) - 1} label fields"
            )
        paths.append(parts[0])
        fields.append(parts[1:])
        lines.append(number)
    if not paths:
        raise HashbenchError(f"{path}: no entries (expected lines 'path l_0 ... l_{num_classes - 1}')")
    raw = np.array(fields, dtype=str)
    ones, zeros = raw == "1", raw == "0"
    bad = ~(ones | zeros)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise HashbenchError(f"{path}:{lines[row]}: label {col} is '{raw[row, col]}', expected 0 or 1")
    return ListFile(np.array(paths, dtype=str), ones.astype(np.uint8), np.array(lines, dtype=np.int64))


class _Scan(NamedTuple):
    folder: Path
    image_root: Path
    lists: dict[str, ListFile]
    unique: np.ndarray           # sorted unique relative paths; an item's id is its position here
    ids: dict[str, np.ndarray]   # split name -> int64 ids of its rows
    stats: np.ndarray            # int64 (U, 2): size, mtime_ns of each unique image (-1 if missing)


class ListFileProtocol(ImageProtocol):
    """Base of list-file protocols; subclasses set ``name``, ``folder``, ``num_classes``, ``topk``.

    train = ``train.txt``, query = ``test.txt``, database = ``database.txt`` (as listed, in order);
    val = ``val_size`` images (seeded by ``split_seed``; fewer if fewer are eligible) drawn from
    the database images that are neither in train nor among the queries. Ids: positions in the
    sorted set of distinct paths of the three lists (one image listed twice has one id).
    ``load()`` checks that every image exists before returning (one-line error with the count).
    ``fingerprint()``: the lists' names, sizes, mtimes and every image's path, size and mtime
    (as scanned by the last ``load()``, else scanned now).
    """

    folder: ClassVar[str] = ""
    multi_label = True
    relevance = "shares >= 1 label"
    disjoint = (("query", "database"), ("query", "train"), ("query", "val"), ("val", "train"))

    @dataclass(frozen=True)
    class Config:
        split_seed: int = param(0, ge=0, doc="seed of the validation draw from the training list")
        val_size: int = param(1000, ge=0, doc="validation images drawn from the training list (0: none)")

    def locate(self) -> Path:
        """The first folder that holds the three list files."""
        searched = roots.search_dirs(self.folder)
        for directory in searched:
            if all((directory / f).is_file() for f in LISTS.values()):
                return directory
        files = (f"train.txt, test.txt (queries), database.txt (lines 'path l_0 ... l_{self.num_classes - 1}') "
                 "and the images they name")
        raise roots.not_found(self.name, self.folder, files, searched)

    def source(self) -> Path:
        return self.locate()

    def _scan(self) -> _Scan:
        cached = getattr(self, "_scanned", None)
        if cached is not None:
            return cached
        folder = self.locate()
        lists = {split: read_list(folder / f, self.num_classes) for split, f in LISTS.items()}
        first = lists["query"].paths[0]
        image_root = folder
        if not (folder / first).is_file() and (folder / "images" / first).is_file():
            image_root = folder / "images"
        everything = np.concatenate([lists[s].paths for s in LISTS])
        unique, inverse = np.unique(everything, return_inverse=True)
        ids, start = {}, 0
        for split in LISTS:
            n = len(lists[split].paths)
            ids[split] = inverse[start:start + n].astype(np.int64)
            start += n
        self._check_consistent(folder, lists, ids, len(unique))
        stats = np.full((len(unique), 2), -1, dtype=np.int64)
        root = str(image_root)
        for i, rel in enumerate(unique.tolist()):
            try:
                st = os.stat(os.path.join(root, rel))
            except OSError:
                continue
            stats[i] = st.st_size, st.st_mtime_ns
        self._scanned = _Scan(folder, image_root, lists, unique, ids, stats)
        return self._scanned

    def _check_consistent(self, folder: Path, lists: dict[str, ListFile], ids: dict[str, np.ndarray], n: int) -> None:
        """An image listed more than once must carry the same labels everywhere."""
        rows = [lists[s] for s in LISTS]
        labels = np.concatenate([r.labels for r in rows])
        all_ids = np.concatenate([ids[s] for s in LISTS])
        _, first = np.unique(all_ids, return_index=True)  # first row of each id (ids are 0..n-1)
        differs = (labels != labels[first[all_ids]]).any(axis=1)
        if differs.any():
            files = np.repeat(list(LISTS.values()), [len(r.paths) for r in rows])
            lines = np.concatenate([r.lines for r in rows])
            paths = np.concatenate([r.paths for r in rows])
            row = int(np.flatnonzero(differs)[0])
            ref = int(first[all_ids[row]])
            raise HashbenchError(
                f"{folder / files[row]}:{lines[row]}: '{paths[row]}' has other labels than at "
                f"{files[ref]}:{lines[ref]}; an image must have one label set"
            )

    def fingerprint(self) -> str:
        scan = self._scan()
        extra = hashlib.sha256(scan.unique.astype("U").tobytes() + scan.stats.tobytes()).digest()
        return roots.stat_fingerprint([scan.folder / f for f in LISTS.values()], extra=extra)

    def load(self) -> Splits:
        self._scanned = None  # re-read the lists and re-check the images on every load
        scan = self._scan()
        missing = np.flatnonzero(scan.stats[:, 0] < 0)
        if len(missing):
            first = ", ".join(scan.unique[missing[:5]].tolist())
            raise HashbenchError(
                f"{self.name}: {len(missing):,} of {len(scan.unique):,} listed images are missing under "
                f"{scan.image_root} (first: {first}); fix the lists or add the images"
            )
        lists, ids = scan.lists, scan.ids
        taken = np.union1d(ids["train"], ids["query"])
        eligible = np.setdiff1d(ids["database"], taken)  # sorted, unique
        rng = np.random.default_rng(self.config.split_seed)
        size = min(max(int(self.config.val_size), 0), len(eligible))
        val_ids = np.sort(rng.choice(eligible, size=size, replace=False)) if size else np.empty(0, np.int64)
        db_ids = ids["database"]
        order = np.argsort(db_ids, kind="stable")
        first_row = order[np.searchsorted(db_ids[order], val_ids)]  # first database row of each val id

        def split(paths: np.ndarray, labels: np.ndarray, index: np.ndarray) -> Split:
            return Split(x=ImageFiles(scan.image_root, paths), labels=labels, index=index)

        db = lists["database"]
        return Splits(
            train=split(lists["train"].paths, lists["train"].labels, ids["train"]),
            val=split(db.paths[first_row], db.labels[first_row], val_ids.astype(np.int64)),
            query=split(lists["query"].paths, lists["query"].labels, ids["query"]),
            database=split(db.paths, db.labels, db_ids),
        )


_NUS_WIDE = {
    "agh": (0.592, 0.615, 0.616), "itq": (0.627, 0.645, 0.664), "dgh": (0.572, 0.607, 0.627),
    "deepbit": (0.392, 0.403, 0.429), "sgh": (0.593, 0.590, 0.607), "bgan": (0.684, 0.714, 0.730),
    "bingan": (0.654, 0.709, 0.713), "greedyhash": (0.633, 0.691, 0.731), "dvb": (0.604, 0.632, 0.665),
    "distillhash": (0.667, 0.675, 0.677), "tbh": (0.717, 0.725, 0.735), "mls3rduh": (0.713, 0.727, 0.750),
    "date": (0.793, 0.809, 0.815), "bihalf": (0.651, 0.663, 0.673), "cibhash": (0.790, 0.807, 0.815),
    "spq": (0.766, 0.774, 0.785), "nsh": (0.758, 0.811, 0.824), "wch": (0.799, 0.823, 0.838),
}
_COCO = {
    "agh": (0.596, 0.625, 0.631), "itq": (0.598, 0.624, 0.648), "dgh": (0.613, 0.631, 0.638),
    "deepbit": (0.407, 0.419, 0.430), "sgh": (0.594, 0.610, 0.618), "bgan": (0.645, 0.682, 0.707),
    "bingan": (0.651, 0.673, 0.696), "greedyhash": (0.582, 0.668, 0.710), "dvb": (0.570, 0.629, 0.623),
    "tbh": (0.706, 0.735, 0.722), "mls3rduh": (0.607, 0.622, 0.641), "cibhash": (0.737, 0.760, 0.775),
    "nsh": (0.746, 0.774, 0.783), "wch": (0.776, 0.808, 0.834),
}
_SOURCE = (
    "NSH (IJCAI 2022) and WCH (ACCV 2022) tables (SPQ: WCH table only); rows were copied between papers, "
    "CNN methods use VGG-16 while WCH fine-tunes ViT-B/16; list files may differ from the papers'"
)


class NusWide(ListFileProtocol):
    """NUS-WIDE-21 (the 21 most frequent concepts) from DeepHash-pytorch list files.

    x: ImageFiles; labels: multi-hot uint8 (N, 21); relevance: shares >= 1 label; K = 5000.
    Splits (the lists' sizes): query 2,100 (``test.txt``, 100/concept), train 10,500
    (``train.txt``, 500/concept), database ``database.txt`` (193,734 in the papers; one public
    list is ~2,000 images short, so no exact size is required); val ``val_size`` (1,000) seeded
    from database images not in train or the queries.
    Data: ``$HASHBENCH_DATA/nus-wide/`` then the cache; image paths as in the module docstring.
    """

    name = "nus-wide"
    summary = "NUS-WIDE-21 list files: 2,100 queries, 10,500 train, ~193k database, 1,000 val; multi-label; mAP@5000"
    folder = "nus-wide"
    num_classes = 21
    topk = 5000
    published = published_by_bits(_NUS_WIDE)
    published_source = _SOURCE


class Coco(ListFileProtocol):
    """MS COCO (80 categories; HashNet lists, images without a category removed) from list files.

    x: ImageFiles; labels: multi-hot uint8 (N, 80); relevance: shares >= 1 label; K = 5000.
    Splits (the lists' sizes): query 5,000 (``test.txt``), train 10,000 (``train.txt``),
    database 117,218 (``database.txt``); val ``val_size`` (1,000) seeded from database images
    not in train or the queries.
    Data: ``$HASHBENCH_DATA/coco/`` then the cache; image paths as in the module docstring.
    """

    name = "coco"
    summary = "MS COCO list files: 5,000 queries, 10,000 train, 117,218 database, 1,000 val; multi-label; mAP@5000"
    folder = "coco"
    num_classes = 80
    topk = 5000
    published = published_by_bits(_COCO)
    published_source = _SOURCE

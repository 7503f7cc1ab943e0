"""A searchable collection: a run's exported encoder and the packed codes of a folder of images
or a protocol split, in one versioned file (``hashbench index`` / ``search`` / ``serve``).

The index file (format ``hashbench-index``, version :data:`INDEX_VERSION`) is a zip archive:

- ``manifest.json``: ``format``, ``version``, ``created``, ``hashbench`` (version), ``run`` (the
  run id, method, row label, bits and mAP of the run), ``encoder`` (the export's manifest,
  :mod:`hashbench.export`, with its checks), ``source`` (``{"kind": "folder", "root": absolute
  path}`` or ``{"kind": "split", "dataset", "dataset_params", "split"}``), ``count``,
  ``labels`` (``null``, or ``{"kind": "single"|"multi", "names": [...]}``), ``skipped``
  (``[{"path", "why"}]``: files that could not be read), ``members`` ({name: SHA-256});
- ``codes.npy``: uint8 (N, ceil(bits / 8)), packed as :func:`hashbench.evaluate.pack_codes`;
- ``items.json``: one entry per code: ``{"path", "size", "mtime_ns"}`` (folder; the path
  relative to the root, "/"-separated) or ``{"id"}`` (split: the protocol's item id);
- ``labels.npy`` (when labelled): int64 (N,) class ids (-1: none) or multi-hot (N, C);
- ``encoder.pt``: the TorchScript encoder (:mod:`hashbench.export`), so a copy of the file is
  all that ``search`` and ``serve`` need.

Every member is checked against its SHA-256 when the file is read (:meth:`Index.load`): a
corrupt, truncated or foreign file is one :class:`IndexFileError`. Search is the exact Hamming
ranking of :class:`hashbench.evaluate.HammingDatabase` (the codes laid out once per loaded
index), ties broken by item order (stable).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .errors import HashbenchError
from .evaluate import HammingDatabase
from .queries import sha256

INDEX_FORMAT = "hashbench-index"
INDEX_VERSION = 1
MEMBERS = ("manifest.json", "codes.npy", "items.json", "labels.npy", "encoder.pt")
#: the largest image (width x height) that is decoded; larger ones are refused
MAX_PIXELS = 40_000_000
#: files read and encoded together when indexing a folder
CHUNK = 256


class IndexFileError(HashbenchError):
    """An index file that cannot be used: corrupt, truncated, of another format or version."""


# ----------------------------------------------------------------------------- images

def read_image(source: str | os.PathLike | bytes, manifest: dict[str, Any], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One image (a file path or its bytes) as uint8 (H, W, C) in the encoder's input layout
    (``manifest``: the export manifest): RGB for backbone encoders (any size); for raw-pixel
    encoders grey or RGB as the run's images, resized to their size with PIL's bilinear filter
    when it differs. HashbenchError when it is not a readable image or has more than
    ``max_pixels`` pixels."""
    from PIL import Image, UnidentifiedImageError

    what = "the upload" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise HashbenchError(f"{what}: {width}x{height} pixels, more than the {max_pixels:,} allowed")
            spec = manifest["input"]
            image = image.convert("L" if spec["channels"] == 1 else "RGB")
            if spec["size"] is not None and list(image.size[::-1]) != list(spec["size"]):
                image = image.resize((spec["size"][1], spec["size"][0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except HashbenchError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise HashbenchError(f"{what}: not a readable image ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
    return array[..., None] if array.ndim == 2 else array


def encode_images(module: Any, images: Sequence[np.ndarray], manifest: dict[str, Any]) -> np.ndarray:
    """Packed codes uint8 (N, W) of images (each uint8 (H, W[, C])) by a TorchScript encoder;
    images of one size are encoded together (in batches of :data:`hashbench.export.BATCH`)."""
    from .export import encode_grouped, run_torch

    return encode_grouped(lambda x: run_torch(module, x), images, manifest)


# ----------------------------------------------------------------------------- the index

@dataclass
class Index:
    """A loaded (or built) index: see the module docstring for the fields' meaning."""

    manifest: dict[str, Any]
    codes: np.ndarray
    items: list[dict[str, Any]]
    labels: np.ndarray | None
    encoder_bytes: bytes
    path: Path | None = None
    _encoder: Any = field(default=None, repr=False)
    _database: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def bits(self) -> int:
        return int(self.manifest["run"]["bits"])

    @property
    def encoder_manifest(self) -> dict[str, Any]:
        return self.manifest["encoder"]

    def encoder(self) -> Any:
        """The TorchScript encoder (loaded once)."""
        if self._encoder is None:
            from .export import load_torchscript

            self._encoder = load_torchscript(self.encoder_bytes)
        return self._encoder

    def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Packed codes of query images (uint8 (H, W, C) each, as :func:`read_image` gives)."""
        return encode_images(self.encoder(), images, self.encoder_manifest)

    def search(self, query_codes: np.ndarray, k: int | None = 10, radius: int | None = None) -> list[list[tuple[int, int]]]:
        """For each packed query code (uint8 (Q, W)): [(item position, Hamming distance)], nearest
        first, ties in item order; at most ``k`` (None: no limit), only distances <= ``radius``
        when it is given."""
        if k is not None and k < 1:
            raise HashbenchError(f"k must be >= 1, got {k}")
        if radius is not None and not 0 <= radius <= self.bits:
            raise HashbenchError(f"radius must be between 0 and {self.bits}, got {radius}")
        if self._database is None:
            self._database = HammingDatabase(self.codes)  # laid out once for every search
        dist = self._database.distances(np.atleast_2d(query_codes))
        out = []
        for row in dist:
            if radius is not None:
                inside = np.flatnonzero(row <= radius)
                order = inside[np.argsort(row[inside], kind="stable")]
            else:
                order = np.argsort(row, kind="stable")
            if k is not None:
                order = order[:k]
            out.append([(int(i), int(row[i])) for i in order])
        return out

    # ---- items -----------------------------------------------------------------------------
    def describe(self, position: int) -> str:
        """The item's path (folder) or ``id N`` (split)."""
        item = self.items[position]
        return item["path"] if "path" in item else f"id {item['id']}"

    def label_names(self, position: int) -> list[str]:
        """The item's label names ([] when unlabelled)."""
        if self.labels is None:
            return []
        names = self.manifest["labels"]["names"]
        value = self.labels[position]
        if value.ndim == 0:
            return [] if value < 0 else [names[int(value)]]
        return [names[j] for j in np.flatnonzero(value)]

    def relevant(self, label: np.ndarray, positions: Sequence[int]) -> list[bool]:
        """Whether each item shares a label with ``label`` (one class id, or a multi-hot row)."""
        assert self.labels is not None
        rows = self.labels[list(positions)]
        if rows.ndim == 1:
            return [bool(label >= 0 and r == label) for r in rows]
        return [bool(np.any(np.logical_and(r, label))) for r in rows]

    def file_path(self, position: int) -> Path:
        """The image file of a folder item, checked to lie inside the indexed root (a symlink
        or a path that leads out of it is refused: HashbenchError)."""
        source = self.manifest["source"]
        if source["kind"] != "folder":
            raise HashbenchError("this index holds a protocol split: its items are not files")
        root = Path(source["root"]).resolve()
        path = (root / self.items[position]["path"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise HashbenchError(f"item {position}: its file is missing or outside {root}")
        return path

    # ---- the file --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The index file (see the module docstring); ``manifest.members`` is filled in."""
        members = {"codes.npy": _npy(self.codes), "items.json": json.dumps(self.items).encode(),
                   "encoder.pt": self.encoder_bytes}
        if self.labels is not None:
            members["labels.npy"] = _npy(self.labels)
        self.manifest["members"] = {name: sha256(data) for name, data in members.items()}
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("manifest.json", json.dumps(self.manifest, indent=1), zipfile.ZIP_DEFLATED)
            for name, data in members.items():
                archive.writestr(name, data, zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED)
        return buffer.getvalue()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index atomically to ``path``."""
        from .store import atomic_write_bytes

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, self.to_bytes())
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Index:
        """Read and check an index file; IndexFileError (one line, naming the file) otherwise."""
        path = Path(path)

        def bad(why: str) -> IndexFileError:
            return IndexFileError(f"{path}: {why}")

        try:
            archive = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise bad("no such index file (hashbench index RUN --images DIR --out FILE makes one)") from None
        except (zipfile.BadZipFile, OSError) as exc:
            raise bad(f"not a hashbench index ({type(exc).__name__}: {exc})") from None
        with archive:
            try:
                manifest = json.loads(archive.read("manifest.json"))
            except KeyError:
                raise bad("not a hashbench index (no manifest.json)") from None
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise bad(f"corrupt manifest ({type(exc).__name__})") from None
            if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
                raise bad(f"not a {INDEX_FORMAT} file")
            version = manifest.get("version")
            if not isinstance(version, int) or version > INDEX_VERSION or version < 1:
                raise bad(f"index version {version!r}; this hashbench reads version {INDEX_VERSION} (rebuild it, "
                          f"or upgrade hashbench)")
            members = manifest.get("members")
            if not isinstance(members, dict) or not {"codes.npy", "items.json", "encoder.pt"} <= set(members):
                raise bad("its manifest lists no members")
            data = {}
            for name, digest in members.items():
                if name not in MEMBERS:
                    raise bad(f"unknown member {name!r}")
                try:
                    data[name] = archive.read(name)
                except (KeyError, zipfile.BadZipFile, OSError, EOFError) as exc:
                    raise bad(f"member {name} cannot be read ({type(exc).__name__}): the file is corrupt") from None
                if sha256(data[name]) != digest:
                    raise bad(f"member {name} does not match its checksum: the file is corrupt")
        try:
            codes = np.load(io.BytesIO(data["codes.npy"]), allow_pickle=False)
            items = json.loads(data["items.json"])
            labels = np.load(io.BytesIO(data["labels.npy"]), allow_pickle=False) if "labels.npy" in data else None
        except (ValueError, OSError) as exc:
            raise bad(f"a member cannot be parsed ({type(exc).__name__})") from None
        width = (int(manifest["run"]["bits"]) + 7) // 8
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != width:
            raise bad(f"codes are {codes.dtype} {codes.shape}, not uint8 (N, {width})")
        if not isinstance(items, list) or len(items) != len(codes) or manifest.get("count") != len(codes):
            raise bad(f"{len(codes)} codes, {len(items) if isinstance(items, list) else '?'} items and "
                      f"a manifest count of {manifest.get('count')!r} disagree")
        if labels is not None and len(labels) != len(codes):
            raise bad(f"{len(labels)} labels for {len(codes)} codes")
        return cls(manifest, codes, items, labels, data["encoder.pt"], path)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- building

@dataclass
class BuildReport:
    """What ``build_index`` did: items ``encoded`` now, ``reused`` from the previous index,
    ``removed`` (gone from the folder), ``skipped`` [(path, why)]."""

    encoded: int = 0
    reused: int = 0
    removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def folder_files(root: Path) -> list[str]:
    """Every file under ``root`` (recursively, sorted, hidden files and folders left out), as
    "/"-separated paths relative to it; symlinks are followed only when they stay inside."""
    root = root.resolve()
    out = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            if path.resolve().is_relative_to(root):
                out.append(path.relative_to(root).as_posix())
    return sorted(out)


def _fingerprint(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def _encoder_for(store: Any, spec: str) -> tuple[Any, dict[str, Any], bytes]:
    """The run's record, its export manifest and TorchScript bytes: ``exports/<run-id>/`` when
    it holds a checked export of this run, else a new export (TorchScript) made and checked now."""
    from .export import FILES, export_run, resolve_run

    record = resolve_run(store, spec)
    folder = store.results_dir / "exports" / record.run_id
    manifest = None
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        data = (folder / FILES["torchscript"]).read_bytes()
        if (manifest.get("run_id") != record.run_id or "torchscript" not in manifest.get("files", {})
                or sha256(data) != manifest["files"]["torchscript"]["sha256"]):
            manifest = None
    except (OSError, ValueError, AttributeError):
        manifest = None
    if manifest is None:
        manifest = export_run(store, record.run_id, formats=("torchscript",))
        manifest.pop("folder", None)
        data = (folder / FILES["torchscript"]).read_bytes()
    if not manifest["checks"]["torchscript"]["equal"]:
        raise HashbenchError(f"run {record.run_id}: its TorchScript encoder does not reproduce the run's codes "
                             f"({manifest['checks']['torchscript']}); not indexing with it")
    return record, manifest, data


def build_index(store: Any, spec: str, *, images: str | os.PathLike | None = None, split: str | None = None,
                out: str | os.PathLike | None = None, folder_labels: bool = False,
                progress: bool | None = None) -> tuple[Index, BuildReport]:
    """Build (or bring up to date) the index ``out`` of run ``spec`` over the folder ``images``
    or the protocol split ``split`` of the run's dataset, and save it (``out`` None:
    ``indexes/<run-id>-<folder name or split>.hbi`` of the results folder). An existing ``out`` of
    the same run and source is updated: folder files whose size and modification time are
    unchanged keep their codes; new and changed ones are encoded; removed ones are dropped.
    ``folder_labels``: each file's label is its first folder under the root (files at the root
    have none). Unreadable files are skipped and listed (``BuildReport.skipped``)."""
    if (images is None) == (split is None):
        raise HashbenchError("give exactly one of --images DIR and --split NAME")
    record, enc_manifest, enc_bytes = _encoder_for(store, spec)
    from .export import load_torchscript

    module = load_torchscript(enc_bytes)
    run = {"run_id": record.run_id, "method": record.config["method"], "label": record.label.method_label(),
           "bits": int(record.config["bits"]), "dataset": record.config["dataset"],
           "map": (record.metrics or {}).get("map")}
    if out is None:
        name = Path(images).resolve().name if images is not None else split
        out = store.results_dir / "indexes" / f"{record.run_id}-{name}.hbi"
    previous = _previous(out, record.run_id)
    report = BuildReport()
    if images is not None:
        root = Path(images).expanduser()
        if not root.is_dir():
            raise HashbenchError(f"--images {images}: not a folder")
        source = {"kind": "folder", "root": str(root.resolve())}
        if previous is not None and previous.manifest["source"] != source:
            raise HashbenchError(f"{out}: an index of {previous.manifest['source']}, not of {source['root']}; "
                                 f"choose another --out")
        codes, items, labels, names = _index_folder(root.resolve(), module, enc_manifest, previous, folder_labels,
                                                    report, progress)
    else:
        source, codes, items, labels, names = _index_split(record, split, module, enc_manifest, progress)
        report.encoded = len(items)
    from . import __version__

    manifest = {"format": INDEX_FORMAT, "version": INDEX_VERSION,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hashbench": __version__,
                "run": run, "encoder": enc_manifest, "source": source, "count": len(items),
                "labels": None if labels is None else {"kind": "single" if labels.ndim == 1 else "multi",
                                                       "names": names},
                "skipped": [{"path": p, "why": w} for p, w in report.skipped]}
    index = Index(manifest, codes, items, labels, enc_bytes)
    index.save(out)
    return index, report


def _previous(out: str | os.PathLike, run_id: str) -> Index | None:
    """The existing index at ``out`` to update (None if there is none); an error if it is not
    an index of ``run_id``."""
    if not Path(out).exists():
        return None
    previous = Index.load(out)
    if previous.manifest["run"]["run_id"] != run_id:
        raise HashbenchError(f"{out}: an index of run {previous.manifest['run']['run_id']}, not {run_id}; "
                             f"choose another --out")
    return previous


def _bar(total: int, desc: str, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="image", disable=None if progress is None else not progress,
                dynamic_ncols=True)


def _index_folder(root: Path, module: Any, manifest: dict[str, Any], previous: Index | None, folder_labels: bool,
                  report: BuildReport, progress: bool | None) -> tuple[np.ndarray, list, np.ndarray | None, list]:
    files = folder_files(root)
    known = {}
    if previous is not None:
        known = {item["path"]: (item, previous.codes[i]) for i, item in enumerate(previous.items)}
        report.removed = len(set(known) - set(files))
    keep: dict[str, tuple[dict[str, Any], np.ndarray]] = {}
    todo = []
    for rel in files:
        stamp = _fingerprint(root / rel)
        old = known.get(rel)
        if old is not None and old[0]["size"] == stamp["size"] and old[0]["mtime_ns"] == stamp["mtime_ns"]:
            keep[rel] = old
        else:
            todo.append((rel, stamp))
    report.reused = len(keep)
    with _bar(len(todo), "indexing", progress) as bar:
        for start in range(0, len(todo), CHUNK):
            chunk, loaded = todo[start:start + CHUNK], []
            for rel, stamp in chunk:
                try:
                    loaded.append((rel, stamp, read_image(root / rel, manifest)))
                except HashbenchError as exc:
                    report.skipped.append((rel, str(exc).split(": ", 1)[-1]))
            codes = encode_images(module, [im for _, _, im in loaded], manifest)
            for (rel, stamp, _), code in zip(loaded, codes):
                keep[rel] = ({"path": rel, **stamp}, code)
            report.encoded += len(loaded)
            bar.update(len(chunk))
    order = sorted(keep)
    items = [keep[p][0] for p in order]
    codes = np.stack([keep[p][1] for p in order]) if order else np.zeros((0, manifest["packed_bytes"]), np.uint8)
    if not folder_labels:
        return codes, items, None, []
    names = sorted({p.split("/", 1)[0] for p in order if "/" in p})
    ids = {n: i for i, n in enumerate(names)}
    labels = np.array([ids[p.split("/", 1)[0]] if "/" in p else -1 for p in order], dtype=np.int64)
    return codes, items, labels, names


def _index_split(record: Any, split: str, module: Any, manifest: dict[str, Any],
                 progress: bool | None) -> tuple[dict[str, Any], np.ndarray, list, np.ndarray, list]:
    from .components import SPLIT_NAMES
    from .config import RunConfig
    from .export import image_list
    from .runner import _load_splits

    if split not in SPLIT_NAMES:
        raise HashbenchError(f"--split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    config = RunConfig.from_dict(record.config)
    protocol, splits = _load_splits(config.dataset, json.dumps(config.dataset_params, sort_keys=True))
    part = getattr(splits, split)
    codes = np.zeros((len(part), manifest["packed_bytes"]), np.uint8)
    with _bar(len(part), f"indexing {split}", progress) as bar:
        for start in range(0, len(part), CHUNK * 4):
            stop = min(len(part), start + CHUNK * 4)
            codes[start:stop] = encode_images(module, image_list(part.x[start:stop]), manifest)
            bar.update(stop - start)
    labels = np.asarray(part.labels)
    labels = labels.astype(np.int64) if labels.ndim == 1 else labels.astype(np.uint8)
    count = max(int(labels.max()) + 1 if labels.ndim == 1 else labels.shape[1], protocol.num_classes)
    classes = list(getattr(protocol, "classes", ()) or ())
    names = classes if len(classes) == count else [str(i) for i in range(count)]  # the protocol's class names
    source = {"kind": "split", "dataset": config.dataset, "dataset_params": config.dataset_params, "split": split}
    return source, codes, [{"id": int(i)} for i in part.index], labels, names


def split_image(index: Index, position: int) -> np.ndarray:
    """The image of a split item (uint8 (H, W[, 3])), loaded from its protocol."""
    from .runner import _load_splits

    source = index.manifest["source"]
    _, splits = _load_splits(source["dataset"], json.dumps(source["dataset_params"], sort_keys=True))
    part = getattr(splits, source["split"])
    return np.asarray(part.x[position])


def search_files(index: Index, paths: Iterable[str | os.PathLike], k: int | None, radius: int | None
                 ) -> Iterator[tuple[str, list[tuple[int, int]]]]:
    """(query path, results) for each image file; HashbenchError for an unreadable one."""
    paths = list(paths)
    images = [read_image(p, index.encoder_manifest) for p in paths]
    results = index.search(index.encode(images), k, radius)
    yield from zip(map(str, paths), results)


__all__: Sequence[str] = ("Index", "IndexFileError", "BuildReport", "build_index", "read_image", "encode_images",
                          "folder_files", "search_files", "split_image", "INDEX_FORMAT", "INDEX_VERSION")

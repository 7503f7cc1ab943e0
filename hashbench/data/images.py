"""Images as protocol items: in-memory uint8 arrays or :class:`ImageFiles`, and their base protocol.

An image protocol (``provides = ("images",)``) gives ``Split.x`` as EITHER a uint8 array
(N, H, W) (grey) or (N, H, W, 3) (RGB), OR an :class:`ImageFiles`. Read both kinds with
:func:`iter_image_batches`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from ..components import Protocol
from ..errors import HashbenchError


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """One image file as uint8 (H, W, 3) RGB (PIL; grey, palette and RGBA are converted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise HashbenchError(f"cannot read image {path}: {exc}") from exc


class ImageFiles:
    """Images stored as files: ``paths`` (str, relative to ``root``), one per item.

    ``x[i]`` reads item i as uint8 (H, W, 3) RGB; ``x[ids]``, ``x[mask]`` and ``x[a:b]`` are
    subsets (ImageFiles, no I/O). ``missing()`` lists the paths that do not exist. Picklable.
    """

    def __init__(self, root: str | os.PathLike, paths: Any) -> None:
        self.root = Path(root)
        paths = np.asarray(paths, dtype=str) if len(paths) else np.empty(0, dtype=str)
        if paths.ndim != 1:
            raise ValueError(f"ImageFiles: paths must be 1-d, got shape {paths.shape}")
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> Path:
        """The full path of item ``i``."""
        return self.root / str(self.paths[i])

    def __getitem__(self, key: Any) -> np.ndarray | ImageFiles:
        if isinstance(key, (int, np.integer)):
            return read_rgb(self.path(int(key)))
        if isinstance(key, slice):
            return ImageFiles(self.root, self.paths[key])
        key = np.asarray(key)
        if key.size == 0:
            return ImageFiles(self.root, self.paths[:0])
        if key.dtype == np.bool_ or np.issubdtype(key.dtype, np.integer):
            return ImageFiles(self.root, self.paths[key])
        raise TypeError(f"ImageFiles indices must be int, int array, bool mask or slice, not {key.dtype}")

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def missing(self) -> list[str]:
        """The relative paths (in order, repeats kept) whose files do not exist."""
        root = str(self.root)
        return [p for p in self.paths.tolist() if not os.path.isfile(os.path.join(root, p))]

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(
            f"ImageFiles ({len(self)} files under {self.root}) is not an array; "
            "read it with hashbench.data.images.iter_image_batches"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageFiles):
            return NotImplemented
        return self.root == other.root and np.array_equal(self.paths, other.paths)

    __hash__ = None  # mutable-looking container; equality by value

    def __repr__(self) -> str:
        return f"ImageFiles(root={str(self.root)!r}, {len(self)} paths)"


def image_count(x: Any) -> int:
    """The number of images in ``x`` (uint8 array or ImageFiles)."""
    if isinstance(x, (np.ndarray, ImageFiles)):
        return len(x)
    raise TypeError(f"expected a uint8 image array or ImageFiles, got {type(x).__name__}")


def iter_image_batches(x: Any, batch_size: int, workers: int = 1) -> Iterator[np.ndarray | list[np.ndarray]]:
    """Consecutive batches of ``x``, in order.

    A numpy array gives slices of itself (views); ImageFiles gives lists of uint8 (H, W, 3)
    arrays (sizes may differ), decoded by ``workers`` threads (the next batch is read while
    the current one is used when workers > 1).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, step = image_count(x), int(batch_size)
    if isinstance(x, np.ndarray):
        for start in range(0, n, step):
            yield x[start:start + step]
        return
    if workers <= 1:
        for start in range(0, n, step):
            yield [x[i] for i in range(start, min(start + step, n))]
        return
    pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="hashbench-images")
    try:
        pending = None
        for start in range(0, n, step):
            submitted = [pool.submit(x.__getitem__, i) for i in range(start, min(start + step, n))]
            if pending is not None:
                yield [f.result() for f in pending]
            pending = submitted
        if pending is not None:
            yield [f.result() for f in pending]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class ImageProtocol(Protocol):
    """Base of the image protocols: ``provides = ("images",)``, ``fingerprint()``, ``source()``.

    Subclasses implement ``source() -> Path`` (the folder or file they read; raises
    HashbenchError when the data is nowhere) and ``fingerprint() -> str`` (changes when the
    source data changes; cheap: file names, sizes, mtimes). ``describe()`` adds ``"source"``.
    """

    provides: ClassVar[tuple[str, ...]] = ("images",)

    def source(self) -> Path:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        try:
            info["source"] = str(self.source())
        except HashbenchError:
            info["source"] = None
        return info


def published_by_bits(table: dict[str, tuple[float, float, float]]) -> dict[str, dict[int, float]]:
    """``{"itq": (.305, .325, .349)}`` (16/32/64 bits, as papers print them) -> ``{"itq": {16: .305, ...}}``."""
    return {method: dict(zip((16, 32, 64), values, strict=True)) for method, values in table.items()}

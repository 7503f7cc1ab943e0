"""The frozen-backbone speed path: disk-cached clean features and view banks.

With a frozen backbone its outputs never change, so the training loop computes them once:

* **clean features** (:func:`clean_features`): backbone outputs of unaugmented images, for
  validation and ``encode``; float32 (N, F) pooled, or (N, T, C) tokens.
* **view bank** (:func:`view_bank`): backbone outputs of ``views`` = A augmented views of each
  training image, (N, A, F) (or (N, A, T, C)); training then samples two different views per
  image and epoch instead of augmenting and running the backbone at every step.

Both are cached on disk under :func:`hashbench.data.roots.cache_root` (``features/<key>/`` and
``banks/<key>/``, written atomically with :func:`_store`), keyed by content,
not by protocol: the sha256 of the images (:func:`content_hash`), the backbone (model, weights
identity, input size), the output kind, and for banks the recipe (and its version), A and
:data:`BANK_SEED`. The bank's augmentations are drawn from the fixed ``BANK_SEED``, NOT the run
seed, so every seed and every method with the same backbone and recipe shares one bank; the
run seed only decides which two views of the bank each image gets in each epoch.

Memory: a bank whose float32 size exceeds :data:`FLOAT16_ABOVE_BYTES` (1 GiB) is stored as
float16 (training casts each batch back to float32); one that would exceed
:data:`MAX_BYTES` (4 GiB) even as float16 is not made, and training takes the unbanked path
(the log says why). Clean features larger than MAX_BYTES are not cached: ``encode`` streams.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .augment import RECIPE_VERSION, Augmenter, derive_seed
from .data.images import ImageFiles, image_count, iter_image_batches
from .data.roots import cache_root
from .errors import HashbenchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: the seed of the view bank's augmentations: fixed, shared by every run seed and method
BANK_SEED = 0
#: images per backbone forward pass
BATCH_SIZE = 256
#: a bank larger than this as float32 is kept as float16
FLOAT16_ABOVE_BYTES = 1 << 30
#: no bank (and no cached clean features) larger than this in memory
MAX_BYTES = 4 << 30
OUTPUTS = ("pooled", "tokens")


def content_hash(x: Any) -> str:
    """24 hex digits identifying images ``x``: sha256 of a uint8 array's shape and bytes, or of
    an ImageFiles' root, paths and each file's size and mtime."""
    digest = hashlib.sha256()
    if isinstance(x, np.ndarray):
        digest.update(f"array {x.dtype} {x.shape}\n".encode())
        digest.update(np.ascontiguousarray(x).data)
    elif isinstance(x, ImageFiles):
        digest.update(f"files {x.root}\n".encode())
        for i in range(len(x)):
            path = x.path(i)
            try:
                st = os.stat(path)
                stamp = f"{st.st_size} {st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            digest.update(f"{x.paths[i]}\0{stamp}\n".encode())
    else:
        raise HashbenchError(f"images must be a uint8 array or ImageFiles, got {type(x).__name__}")
    return digest.hexdigest()[:24]


def backbone_identity(backbone: Any) -> dict[str, Any]:
    """What makes a frozen backbone's outputs: model, weights identity, input size."""
    return {"model": backbone.config.model, "weights": backbone.weights,
            "input_size": list(backbone.input_size)}


def forward(backbone: Any, x: torch.Tensor, output: str) -> torch.Tensor:
    """Backbone outputs of a preprocessed batch (B, 3, S, S): pooled (B, F) or tokens (B, T, C)."""
    if output == "pooled":
        return backbone.features(x)
    if output == "tokens":
        return backbone.tokens(x)
    raise HashbenchError(f"backbone output must be one of {', '.join(OUTPUTS)}, got '{output}'")


def output_shape(backbone: Any, output: str) -> tuple[int, ...]:
    """Shape of one item's backbone output ((F,) or (T, C)), from a forward pass of zeros."""
    import torch

    h, w = backbone.input_size
    with torch.inference_mode():
        out = forward(backbone, torch.zeros(1, 3, h, w), output)
    return tuple(int(d) for d in out.shape[1:])


def feature_batches(backbone: Any, x: Any, output: str = "pooled", batch_size: int = BATCH_SIZE,
                    desc: str | None = None) -> Iterator[np.ndarray]:
    """Backbone outputs of the clean images ``x``, batch by batch: float32 numpy (b, ...).

    Eval mode, no gradients (a trained module's mode is restored afterwards)."""
    import torch
    from tqdm.auto import tqdm

    n = image_count(x)
    module = backbone.module
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(iter_image_batches(x, batch_size), total=math.ceil(n / batch_size),
                              disable=None if desc else True, desc=desc, unit="batch", leave=False):
                yield forward(backbone, backbone.preprocess(batch), output).float().cpu().numpy()
    finally:
        module.train(was_training)


def _store(folder: Path, ids: np.ndarray, feats: np.ndarray, meta: dict[str, Any]) -> None:
    """Write a cache entry folder (index.npy, features.npy, meta.json) atomically: temp folder + rename."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        np.save(tmp / "index.npy", ids)
        np.save(tmp / "features.npy", feats)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        with contextlib.suppress(FileExistsError, OSError):
            os.rename(tmp, folder)  # another process may have stored it first: keep theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _load(folder: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array of ``shape`` in ``folder``; None if absent. An unreadable or misshapen
    entry is removed (so that the recomputed one can be stored)."""
    if not folder.exists():
        return None
    try:
        array = np.load(folder / "features.npy", allow_pickle=False)
        if tuple(array.shape) == shape:
            return array
    except (OSError, ValueError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
    return None


def clean_features(backbone: Any, x: Any, output: str = "pooled", *, digest: str | None = None,
                   progress: bool = True) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Backbone outputs of the unaugmented images ``x`` (frozen backbone), cached on disk.

    Returns (float32 (N, F) or (N, T, C), info) with info ``{"key", "cache_hit"}``; or
    (None, info with ``"reason"``) when they would exceed MAX_BYTES (callers stream with
    :func:`feature_batches`). ``digest``: ``content_hash(x)`` if already known.
    """
    if not backbone.config.frozen:
        raise HashbenchError("clean features are cached for frozen backbones only")
    n = image_count(x)
    shape = (n, *output_shape(backbone, output))
    if 4 * math.prod(shape) > MAX_BYTES:
        return None, {"key": None, "cache_hit": False, "reason": f"{shape} float32 exceeds {MAX_BYTES} bytes"}
    identity = {"kind": "clean", "images": digest or content_hash(x), "output": output,
                **backbone_identity(backbone)}
    key = _key(identity)
    folder = cache_root() / "features" / key
    cached = _load(folder, shape)
    if cached is not None:
        return cached, {"key": key, "cache_hit": True}
    desc = f"features of {n} images ({backbone.config.model})" if progress else None
    parts = list(feature_batches(backbone, x, output, desc=desc))
    feats = np.concatenate(parts) if parts else np.zeros(shape, np.float32)
    _store(folder, np.arange(n, dtype=np.int64), feats, {**identity, "shape": list(shape)})
    return feats, {"key": key, "cache_hit": False}


def view_bank(backbone: Any, x: Any, recipe: str, views: int, output: str = "pooled", *,
              digest: str | None = None, progress: bool = True) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Backbone outputs of ``views`` augmented views of each image of ``x`` (frozen backbone).

    Returns (bank (N, views, F) or (N, views, T, C), float32 or float16, info) with info
    ``{"key", "cache_hit", "views", "dtype", "recipe", "seed"}``; or (None, info with
    ``"reason"``) when too large. View a of the images in batch j (BATCH_SIZE images, in order)
    is augmented with seed ``derive_seed(BANK_SEED, a, j)``. Cached on disk; a progress bar
    shows the computation.
    """
    import torch
    from tqdm.auto import tqdm

    if not backbone.config.frozen:
        raise HashbenchError("a view bank needs a frozen backbone")
    if views < 2:
        raise HashbenchError(f"bank_views must be 0 (no bank) or >= 2, got {views}")
    augmenter = Augmenter(backbone, recipe)
    n = image_count(x)
    shape = (n, int(views), *output_shape(backbone, output))
    size32 = 4 * math.prod(shape)
    dtype = np.float16 if size32 > FLOAT16_ABOVE_BYTES else np.float32
    info: dict[str, Any] = {"views": int(views), "recipe": recipe, "seed": BANK_SEED,
                            "dtype": np.dtype(dtype).name, "shape": list(shape)}
    if size32 * np.dtype(dtype).itemsize // 4 > MAX_BYTES:
        return None, {**info, "key": None, "cache_hit": False,
                      "reason": f"bank {shape} {info['dtype']} exceeds {MAX_BYTES} bytes"}
    identity = {"kind": "view-bank", "images": digest or content_hash(x), "output": output,
                "recipe": recipe, "recipe_version": RECIPE_VERSION, "views": int(views),
                "seed": BANK_SEED, "dtype": info["dtype"], **backbone_identity(backbone)}
    key = _key(identity)
    info["key"] = key
    folder = cache_root() / "banks" / key
    cached = _load(folder, shape)
    if cached is not None:
        return cached, {**info, "cache_hit": True}
    bank = np.empty(shape, dtype=dtype)
    module = backbone.module
    module.eval()
    start = 0
    batches = iter_image_batches(x, BATCH_SIZE)
    with torch.inference_mode():
        for j, batch in enumerate(tqdm(batches, total=math.ceil(n / BATCH_SIZE), unit="batch",
                                       disable=None if progress else True,
                                       desc=f"view bank: {views} views of {n} images")):
            unit = augmenter.unit(batch)
            stop = start + len(unit)
            for a in range(views):
                view = augmenter.augment(unit, derive_seed(BANK_SEED, a, j))
                bank[start:stop, a] = forward(backbone, view, output).float().cpu().numpy()
            start = stop
    _store(folder, np.arange(n, dtype=np.int64), bank, {**identity, "shape": list(shape)})
    return bank, {**info, "cache_hit": False}

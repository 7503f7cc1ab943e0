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
identity, input size), the output kind, and for banks the recipe (its name and ``version``:
the built-ins' is :data:`hashbench.augment.RECIPE_VERSION`), A and
:data:`BANK_SEED`. The bank's augmentations are drawn from the fixed ``BANK_SEED``, NOT the run
seed, so every seed and every method with the same backbone and recipe shares one bank; the
run seed only decides which two views of the bank each image gets in each epoch.

Memory: a bank whose float32 size exceeds :data:`FLOAT16_ABOVE_BYTES` (1 GiB) is stored as
float16 (training casts each batch back to float32); one that would exceed
:data:`MAX_BYTES` (4 GiB) even as float16 is not made, and training takes the unbanked path
(the log says why). Clean features larger than MAX_BYTES are not cached: ``encode`` streams.

One pass, several outputs: :func:`clean_outputs` and :func:`view_banks` compute every requested
output kind ("pooled", "tokens") that is not cached yet in ONE backbone pass over the images
and cache each under its own key (so a grid whose methods read pooled features and tokens pays
for the backbone once; :func:`hashbench.runner.warm_caches` asks for the union before a grid).
A value is the same whichever set of outputs its pass computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from .augment import Augmenter, derive_seed
from .data.images import ImageFiles, image_count, iter_image_batches
from .data.roots import cache_root
from .errors import HashbenchError
from .models.backbones import OUTPUTS

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


@dataclass(frozen=True)
class CacheRead:
    """Frozen-backbone outputs that a run will read from this cache (what the runner warms).

    The backbone (registry name, ``pretrained``, ``input_size``; built frozen), the ``output``
    kind, the ``splits`` (names of the protocol's splits) whose clean outputs the run reads, and
    ``bank``: (recipe, views) of a view bank of the train split, or None.
    """

    backbone: str
    pretrained: bool | str
    input_size: int | None
    output: str
    splits: tuple[str, ...] = ()
    bank: tuple[str, int] | None = None


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
    return backbone.outputs(x, (output,))[output]


def output_shapes(backbone: Any, outputs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Shape of one item's backbone output per kind ((F,) or (T, C)), from a pass of zeros."""
    import torch

    h, w = backbone.input_size
    with torch.inference_mode():
        out = backbone.outputs(torch.zeros(1, 3, h, w), tuple(outputs))
    return {k: tuple(int(d) for d in v.shape[1:]) for k, v in out.items()}


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


def _load(folder: Path, shape: tuple[int, ...], fetch: bool = True) -> np.ndarray | None:
    """The cached array of ``shape`` in ``folder``; None if absent. An unreadable or misshapen
    entry is removed (so that the recomputed one can be stored). ``fetch=False``: only the
    header is read; the array is a read-only memory map."""
    if not folder.exists():
        return None
    try:
        array = np.load(folder / "features.npy", allow_pickle=False, mmap_mode=None if fetch else "r")
        if tuple(array.shape) == shape:
            return array
    except (OSError, ValueError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _outputs(outputs: str | Sequence[str]) -> tuple[str, ...]:
    names = (outputs,) if isinstance(outputs, str) else tuple(dict.fromkeys(outputs))
    bad = [n for n in names if n not in OUTPUTS]
    if bad or not names:
        raise HashbenchError(f"backbone output must be one of {', '.join(OUTPUTS)}, got '{bad[0] if bad else ''}'")
    return names


def clean_outputs(backbone: Any, x: Any, outputs: Sequence[str], *, digest: str | None = None,
                  progress: bool = True, fetch: bool = True) -> dict[str, tuple[np.ndarray | None, dict[str, Any]]]:
    """Backbone outputs of the unaugmented images ``x`` (frozen backbone), cached on disk.

    For each kind of ``outputs``: (float32 (N, F) or (N, T, C), info) with info ``{"key",
    "cache_hit"}``; or (None, info with ``"reason"``) when it would exceed MAX_BYTES (callers
    stream with :func:`feature_batches`). The kinds not cached yet are computed in one pass.
    ``digest``: ``content_hash(x)`` if already known. ``fetch=False`` (to warm the cache): a
    cached kind is checked but not read into memory (a read-only memory map is returned).
    """
    if not backbone.config.frozen:
        raise HashbenchError("clean features are cached for frozen backbones only")
    names = _outputs(outputs)
    n = image_count(x)
    shapes = {k: (n, *v) for k, v in output_shapes(backbone, names).items()}
    images = digest or content_hash(x)
    result: dict[str, tuple[np.ndarray | None, dict[str, Any]]] = {}
    todo: dict[str, tuple[Path, dict[str, Any]]] = {}
    for name in names:
        shape = shapes[name]
        if 4 * math.prod(shape) > MAX_BYTES:
            result[name] = (None, {"key": None, "cache_hit": False,
                                   "reason": f"{shape} float32 exceeds {MAX_BYTES} bytes"})
            continue
        identity = {"kind": "clean", "images": images, "output": name, **backbone_identity(backbone)}
        key = _key(identity)
        folder = cache_root() / "features" / key
        cached = _load(folder, shape, fetch)
        if cached is not None:
            result[name] = (cached, {"key": key, "cache_hit": True})
        else:
            todo[name] = (folder, identity)
            result[name] = (np.empty(shape, np.float32), {"key": key, "cache_hit": False})
    if todo:
        import torch
        from tqdm.auto import tqdm

        module = backbone.module
        was_training = module.training
        module.eval()
        start = 0
        try:
            with torch.inference_mode():
                for batch in tqdm(iter_image_batches(x, BATCH_SIZE), total=math.ceil(n / BATCH_SIZE),
                                  disable=None if progress else True, unit="batch", leave=False,
                                  desc=f"{'+'.join(todo)} of {n} images ({backbone.config.model})"):
                    out = backbone.outputs(backbone.preprocess(batch), tuple(todo))
                    stop = start + len(batch)
                    for name in todo:
                        result[name][0][start:stop] = out[name].float().cpu().numpy()
                    start = stop
        finally:
            module.train(was_training)
        for name, (folder, identity) in todo.items():
            _store(folder, np.arange(n, dtype=np.int64), result[name][0], {**identity, "shape": list(shapes[name])})
    return result


def clean_features(backbone: Any, x: Any, output: str = "pooled", *, digest: str | None = None,
                   progress: bool = True) -> tuple[np.ndarray | None, dict[str, Any]]:
    """One kind of :func:`clean_outputs`: (array or None, info)."""
    return clean_outputs(backbone, x, (output,), digest=digest, progress=progress)[output]


def view_banks(backbone: Any, x: Any, recipe: str, views: int, outputs: Sequence[str], *,
               digest: str | None = None, progress: bool = True, fetch: bool = True) -> dict[str, tuple[np.ndarray | None, dict[str, Any]]]:
    """Backbone outputs of ``views`` augmented views of each image of ``x`` (frozen backbone).

    For each kind of ``outputs``: (bank (N, views, F) or (N, views, T, C), float32 or float16,
    info) with info ``{"key", "cache_hit", "views", "dtype", "recipe", "seed", "shape"}``; or
    (None, info with ``"reason"``) when too large. View a of the images in batch j
    (BATCH_SIZE images, in order) is augmented with seed ``derive_seed(BANK_SEED, a, j)``.
    Cached on disk, keyed by the images, output, recipe name and version, views, seed, dtype
    and backbone; the kinds not cached yet are computed in one pass (a progress bar shows it).
    ``fetch=False``: as in :func:`clean_outputs`.
    """
    if not backbone.config.frozen:
        raise HashbenchError("a view bank needs a frozen backbone")
    if views < 2:
        raise HashbenchError(f"bank_views must be 0 (no bank) or >= 2, got {views}")
    names = _outputs(outputs)
    augmenter = Augmenter(backbone, recipe)
    n = image_count(x)
    base = {"kind": "view-bank", "images": digest or content_hash(x), "recipe": recipe,
            "recipe_version": augmenter.version, "views": int(views), "seed": BANK_SEED,
            **backbone_identity(backbone)}
    result: dict[str, tuple[np.ndarray | None, dict[str, Any]]] = {}
    todo: dict[str, tuple[Path, dict[str, Any], np.ndarray]] = {}
    for name, item in output_shapes(backbone, names).items():
        shape = (n, int(views), *item)
        bank, info, pending = _bank_slot(shape, recipe, {**base, "output": name}, fetch)
        result[name] = (bank, info)
        if pending is not None:
            todo[name] = (*pending, bank)
    if todo:
        _fill_banks(backbone, x, augmenter, views, todo, progress)
    return result


def _bank_slot(shape: tuple[int, ...], recipe: str, identity: dict[str, Any],
               fetch: bool) -> tuple[np.ndarray | None, dict[str, Any], tuple[Path, dict[str, Any]] | None]:
    """One output's bank of ``shape`` (N, A, ...): (the cached bank, info, None), or (an empty
    array to fill, info, (cache folder, identity) to store it under), or (None, info with the
    reason, None) when too large. float16 above FLOAT16_ABOVE_BYTES as float32."""
    size32 = 4 * math.prod(shape)
    dtype = np.dtype(np.float16 if size32 > FLOAT16_ABOVE_BYTES else np.float32)
    info: dict[str, Any] = {"views": shape[1], "recipe": recipe, "seed": BANK_SEED,
                            "dtype": dtype.name, "shape": list(shape)}
    if size32 * dtype.itemsize // 4 > MAX_BYTES:
        return None, {**info, "key": None, "cache_hit": False,
                      "reason": f"bank {shape} {dtype.name} exceeds {MAX_BYTES} bytes"}, None
    identity = {**identity, "dtype": dtype.name}
    key = _key(identity)
    folder = cache_root() / "banks" / key
    cached = _load(folder, shape, fetch)
    if cached is not None:
        return cached, {**info, "key": key, "cache_hit": True}, None
    return np.empty(shape, dtype=dtype), {**info, "key": key, "cache_hit": False}, (folder, identity)


def _fill_banks(backbone: Any, x: Any, augmenter: Augmenter, views: int,
                todo: dict[str, tuple[Path, dict[str, Any], np.ndarray]], progress: bool) -> None:
    """Fill each ``todo`` bank (output name -> (folder, identity, array (N, views, ...))) in one
    pass over ``x`` (every view of a batch through the backbone once), then store them."""
    import torch
    from tqdm.auto import tqdm

    n = image_count(x)
    backbone.module.eval()
    start = 0
    with torch.inference_mode():
        batches = iter_image_batches(x, BATCH_SIZE)
        for j, batch in enumerate(tqdm(batches, total=math.ceil(n / BATCH_SIZE), unit="batch",
                                       disable=None if progress else True,
                                       desc=f"view bank ({'+'.join(todo)}): {views} views of {n} images")):
            unit = augmenter.unit(batch)
            stop = start + len(unit)
            for a in range(views):
                out = backbone.outputs(augmenter.augment(unit, derive_seed(BANK_SEED, a, j)), tuple(todo))
                for name, (_, _, bank) in todo.items():
                    bank[start:stop, a] = out[name].float().cpu().numpy()
            start = stop
    for folder, identity, bank in todo.values():
        _store(folder, np.arange(n, dtype=np.int64), bank, {**identity, "shape": list(bank.shape)})


def view_bank(backbone: Any, x: Any, recipe: str, views: int, output: str = "pooled", *,
              digest: str | None = None, progress: bool = True) -> tuple[np.ndarray | None, dict[str, Any]]:
    """One kind of :func:`view_banks`: (bank or None, info)."""
    return view_banks(backbone, x, recipe, views, (output,), digest=digest, progress=progress)[output]

"""Feature vectors for the shallow methods, from an image protocol's splits.

``FeatureSpec`` says how: raw pixels (``backbone`` None) or a backbone's pooled features.
Backbone features of every item of the splits are computed once and cached on disk under a
content key (protocol, its params and source fingerprint, backbone, weights identity, input
size), so every run, seed and bit length after the first reuses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .components import SPLIT_NAMES, Protocol, Split, Splits, build_config
from .data.roots import cache_root
from .errors import HashbenchError
from .registry import registry

PIXELS = ("none", "pixels")
BATCH_SIZE = 256  # images per backbone forward pass


@dataclass(frozen=True)
class FeatureSpec:
    """How an image protocol's items become feature vectors for ``input = "features"`` methods.

    backbone: a backbone name (any timm model, or a registered one), or None for raw pixels
    (scaled to [0, 1] and flattened); pretrained: False, True (the backbone's weight source)
    or a path to a weights file; input_size: square input side, None for the backbone's own.
    """

    backbone: str | None = None
    pretrained: bool | str = False
    input_size: int | None = None

    def __post_init__(self) -> None:
        if self.backbone is not None and self.backbone.lower() in PIXELS:
            object.__setattr__(self, "backbone", None)
        if self.backbone is None and (self.pretrained is not False or self.input_size is not None):
            raise HashbenchError("--pretrained and --input-size need a --backbone (raw pixels have no weights)")
        if self.input_size is not None and not 8 <= self.input_size <= 2048:
            raise HashbenchError(f"input size must be between 8 and 2048 pixels, got {self.input_size}")

    @classmethod
    def resolve(cls, params: dict[str, Any]) -> "FeatureSpec":
        """Build from plain data (experiment file / CLI), with one-line errors; checks the name."""
        spec = build_config(cls, params, "features")
        if spec.backbone is not None:
            registry("backbone").entry(spec.backbone)  # unknown name: error listing close ones
        if isinstance(spec.pretrained, str):
            path = Path(spec.pretrained).expanduser()
            if not path.is_file():
                raise HashbenchError(f"--pretrained {spec.pretrained}: no such weights file")
            object.__setattr__(spec, "pretrained", str(path.resolve()))
        return spec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pixels(x: Any, protocol: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise HashbenchError(
            f"protocol {protocol}: raw pixels need images of one size in memory; give a --backbone"
        )
    return (x.reshape(len(x), -1).astype(np.float32) / 255.0)


def _replace_x(splits: Splits, make) -> Splits:
    parts = {}
    for name in SPLIT_NAMES:
        split = getattr(splits, name)
        parts[name] = Split(x=make(split), labels=split.labels, index=split.index)
    return Splits(**parts)


def _key(protocol: Protocol, dataset_params: dict[str, Any], spec: FeatureSpec, weights: str,
         input_size: int) -> str:
    fingerprint = getattr(protocol, "fingerprint", lambda: "")()
    identity = {
        "dataset": protocol.name, "params": dataset_params, "source": fingerprint,
        "backbone": spec.backbone, "weights": weights, "input_size": input_size,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _load_cached(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        ids = np.load(folder / "index.npy", allow_pickle=False)
        feats = np.load(folder / "features.npy", allow_pickle=False, mmap_mode=None)
    except (OSError, ValueError):
        return None
    if feats.ndim != 2 or len(feats) != len(ids):
        return None
    return ids, feats


def _store(folder: Path, ids: np.ndarray, feats: np.ndarray, meta: dict[str, Any]) -> None:
    """Write the cache entry as a folder, atomically (temporary folder + rename)."""
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


def feature_splits(protocol: Protocol, dataset_params: dict[str, Any], splits: Splits,
                   spec: FeatureSpec) -> tuple[Splits, dict[str, Any]]:
    """Splits whose ``x`` are float32 features (N, D); and a description for the run record.

    Raw pixels are computed on the fly; backbone features are read from, or written to, the
    cache under :func:`cache_root` ``/features/<key>/``.
    """
    if spec.backbone is None:
        return _replace_x(splits, lambda s: _pixels(s.x, protocol.name)), {"backbone": None, "cached": False}
    from .data.images import iter_image_batches

    backbone = registry("backbone").create(spec.backbone, pretrained=spec.pretrained,
                                           input_size=spec.input_size)
    input_size = int(backbone.data_config["input_size"][-1])
    key = _key(protocol, dataset_params, spec, backbone.weights, input_size)
    folder = cache_root() / "features" / key
    describe = {"backbone": spec.backbone, "weights": backbone.weights, "input_size": input_size,
                "feature_dim": backbone.feature_dim, "cache_key": key}
    cached = _load_cached(folder)
    if cached is None:
        # every distinct item once, whichever splits it belongs to
        id_parts, feat_parts, seen = [], [], np.empty(0, np.int64)
        for name in SPLIT_NAMES:
            split = getattr(splits, name)
            new = np.flatnonzero(~np.isin(split.index, seen))
            if len(new) == 0:
                continue
            id_parts.append(split.index[new])
            feat_parts.append(backbone.encode_images(iter_image_batches(split.x[new], BATCH_SIZE)))
            seen = np.concatenate([seen, split.index[new]])
        ids, feats = np.concatenate(id_parts), np.concatenate(feat_parts).astype(np.float32, copy=False)
        _store(folder, ids, feats, {**describe, "dataset": protocol.name, "params": dataset_params})
        describe["cached"] = False
    else:
        ids, feats = cached
        describe["cached"] = True
    order = np.argsort(ids)

    def lookup(split: Split) -> np.ndarray:
        pos = order[np.minimum(np.searchsorted(ids, split.index, sorter=order), len(ids) - 1)]
        if not np.array_equal(ids[pos], split.index):
            raise HashbenchError(f"feature cache {folder} lacks items of split; delete the folder to rebuild it")
        return feats[pos]

    return _replace_x(splits, lookup), describe

"""Feature vectors for the shallow methods, from an image protocol's splits.

``FeatureSpec`` says how: raw pixels (``backbone`` None) or a frozen backbone's pooled features.
Backbone features are computed once and cached on disk by :mod:`hashbench.banks` under a
content key (the images' bytes, the backbone model, weights identity and input size), so every
run, seed, bit length and deep method with the same backbone after the first reuses them.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .components import SPLIT_NAMES, Protocol, Split, Splits, build_config
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
    def resolve(cls, params: dict[str, Any]) -> FeatureSpec:
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


def frozen_backbone(name: str, pretrained: bool | str = False, input_size: int | None = None) -> Any:
    """The frozen backbone ``name`` (weights ``pretrained``, side ``input_size``) of this process:
    built once per (name, weights, input size) and registry (the two most recent are kept), and
    shared by the grid's preflight, its cache warm-up and its runs' feature extraction. Frozen:
    eval mode, no trainable parameter; a caller must not train it nor change it."""
    return _frozen_backbone(registry("backbone"), name, pretrained, input_size)


@functools.lru_cache(maxsize=2)
def _frozen_backbone(backbones: Any, name: str, pretrained: bool | str, input_size: int | None) -> Any:
    return backbones.create(name, pretrained=pretrained, input_size=input_size, frozen=True)


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


def feature_splits(protocol: Protocol, dataset_params: dict[str, Any], splits: Splits,
                   spec: FeatureSpec) -> tuple[Splits, dict[str, Any]]:
    """Splits whose ``x`` are float32 features (N, D); and a description for the run record.

    Raw pixels are computed on the fly; backbone features come from
    :func:`hashbench.banks.clean_features`, the one on-disk cache of frozen-backbone outputs
    (keyed by image content and backbone), which the deep methods share.
    """
    if spec.backbone is None:
        return _replace_x(splits, lambda s: _pixels(s.x, protocol.name)), {"backbone": None, "cached": False}
    from .banks import clean_features

    backbone = frozen_backbone(spec.backbone, spec.pretrained, spec.input_size)
    hits = []

    def features(split: Split) -> np.ndarray:
        feats, info = clean_features(backbone, split.x)
        if feats is None:
            raise HashbenchError(f"protocol {protocol.name}: backbone features too large to hold ({info['reason']})")
        hits.append(info["cache_hit"])
        return feats

    out = _replace_x(splits, features)
    return out, {"backbone": spec.backbone, "weights": backbone.weights,
                 "input_size": int(backbone.data_config["input_size"][-1]),
                 "feature_dim": backbone.feature_dim, "cached": all(hits)}

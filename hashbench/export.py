"""From a run to a self-contained encoder: uint8 images -> packed codes, as TorchScript and ONNX.

``hashbench export RUN`` rebuilds the run's fitted method from its model file
(``runs/<run-id>.model.pt``, :meth:`hashbench.store.RunStore.model_bytes`) and puts the whole
encoder in one module (:class:`CodePipeline`):

    images uint8 (B, H, W, C) -> input (:class:`ImageInput`: scale, resize, normalize, as
    :meth:`TimmBackbone.preprocess`; or :class:`PixelInput`: the flattened pixels / 255)
    -> backbone output (:class:`BackboneOutput`, pooled or tokens; none for raw pixels)
    -> ``method.encoder()`` (bool (B, bits)) -> :class:`PackBits` (uint8 (B, ceil(bits / 8)),
    the first bit in the high bit of byte 0, as ``numpy.packbits`` and ``hashbench.evaluate.pack_codes``).

Input layout (the manifest's ``input``): NHWC uint8. With a backbone: C = 3 (RGB; grey images
repeated to 3 channels give the same codes as the run's grey path) and any H, W (each image is
resized to the backbone's input side inside the model). Raw pixels: exactly the protocol's
images' H, W and C (1 for grey).

The export writes ``encoder.pt`` (``torch.jit.trace``), ``encoder.onnx`` (``torch.onnx.export``,
dynamo; needs the extra ``hashbench[export]``) and ``manifest.json`` into ``exports/<run-id>/``
of the results folder, then CHECKS them: each file's codes of the run's query images, packed,
must hash to the SHA-256 the run recorded of the codes it evaluated (``model.query_codes_sha256``);
the manifest says, per format, ``equal`` and the number of differing bits.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .banks import MIN_FORWARD, backbone_identity, chunk_bounds
from .config import RunConfig
from .errors import HashbenchError
from .evaluate import pack_codes, unpack_codes
from .queries import sha256
from .store import RunRecord, RunStore, atomic_write_bytes, atomic_write_json

MANIFEST_FORMAT = "hashbench-encoder"
MANIFEST_VERSION = 1
FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "encoder.pt", "onnx": "encoder.onnx"}
#: images per forward pass when checking or encoding; a last batch shorter than
#: hashbench.banks.MIN_FORWARD joins the one before (the backbone's CPU kernels give the same
#: bits for batches of at least that many images)
BATCH = 256


# ----------------------------------------------------------------------------- run -> method

def resolve_run(store: RunStore, spec: str) -> RunRecord:
    """The done record named by ``spec``: a run id, or ``best:LABEL`` (the done run with the
    highest mAP among those whose table row is LABEL, e.g. ``best:cibhash`` or
    ``best:nsh[sorter=exact]``, that kept a model; optionally ``best:LABEL@BITS``).
    HashbenchError naming what is there otherwise."""
    if spec.startswith("best:"):
        label, _, bits = spec[5:].partition("@")
        records = [r for r in store.existing_records() if r.status == "done" and r.model is not None
                   and r.label.method_label() == label and (not bits or str(r.config["bits"]) == bits)]
        if not records:
            raise HashbenchError(f"{spec}: no done run with a saved model whose row is {label!r}"
                                 + (f" at {bits} bits" if bits else "") + f" in {store.runs_dir}")
        return min(records, key=lambda r: (-r.metrics["map"], r.run_id))  # ties: the first run id
    record = store.peek(spec)
    if record is None:
        raise HashbenchError(f"no run {spec!r} in {store.runs_dir} (`hashbench table` lists the runs; "
                             f"best:METHOD picks the best one)")
    if record.status != "done":
        raise HashbenchError(f"run {spec} is {record.status}, not done: nothing to export")
    return record


def fitted_method(store: RunStore, record: RunRecord) -> Any:
    """The run's method, rebuilt from its config and restored from its model file."""
    import torch

    from .runner import MODEL_FORMAT, MODEL_VERSION, build_method

    data = store.model_bytes(record)
    try:
        saved = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise HashbenchError(f"run {record.run_id}: its model file cannot be read ({type(exc).__name__})") from None
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT or saved.get("version") != MODEL_VERSION:
        raise HashbenchError(f"run {record.run_id}: its model file is not a {MODEL_FORMAT} v{MODEL_VERSION} file")
    if saved.get("run_id") != record.run_id:
        raise HashbenchError(f"run {record.run_id}: its model file belongs to run {saved.get('run_id')}")
    method = build_method(RunConfig.from_dict(record.config))
    method.restore(saved["state"])
    return method


# ----------------------------------------------------------------------------- the modules

def _modules() -> dict[str, type]:
    """The torch modules of the pipeline (defined on first use: torch loads only when needed)."""
    if _MODULES:
        return _MODULES
    import torch
    import torch.nn.functional as F
    from torch import nn

    from .models.backbones import ANTIALIASED

    class ImageInput(nn.Module):
        """uint8 (B, H, W, 3) -> float32 (B, 3, S, S): /255, resize (timm's interpolation,
        antialiased; the identity when already S x S), clamp to [0, 1], (x - mean) / std."""

        def __init__(self, size: tuple[int, int], mode: str, mean: Any, std: Any) -> None:
            super().__init__()
            self.size, self.mode = size, mode
            self.antialias = mode in ANTIALIASED
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.permute(0, 3, 1, 2).float().div(255.0)
            if self.antialias:
                x = F.interpolate(x, size=self.size, mode=self.mode, antialias=True, align_corners=False)
            else:
                x = F.interpolate(x, size=self.size, mode=self.mode)
            return (x.clamp(0.0, 1.0) - self.mean) / self.std

    class PixelInput(nn.Module):
        """uint8 (B, H, W, C) -> float32 (B, H*W*C): the raw-pixel features (row-major, / 255)."""

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return images.reshape(images.shape[0], -1).float().div(255.0)

    class BackboneOutput(nn.Module):
        """A timm module's pooled features (B, F) or tokens (B, T, C), as TimmBackbone.outputs."""

        def __init__(self, module: nn.Module, output: str, prefix: int, nhwc: bool) -> None:
            super().__init__()
            self.module, self.output, self.prefix, self.nhwc = module, output, prefix, nhwc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.module.forward_features(x)
            if self.output == "pooled":
                return self.module.forward_head(out)
            if out.ndim == 3:
                return out[:, self.prefix:]
            return out.flatten(1, 2) if self.nhwc else out.flatten(2).transpose(1, 2)

    class PackBits(nn.Module):
        """bool (B, bits) -> uint8 (B, ceil(bits / 8)), the first bit in the high bit (numpy.packbits)."""

        def __init__(self, bits: int) -> None:
            super().__init__()
            self.pad = (-bits) % 8
            self.register_buffer("weights", torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int32))

        def forward(self, codes: torch.Tensor) -> torch.Tensor:
            b = codes.to(torch.int32)
            if self.pad:
                b = F.pad(b, (0, self.pad))
            return (b.reshape(b.shape[0], -1, 8) * self.weights).sum(-1).to(torch.uint8)

    class CodePipeline(nn.Module):
        """uint8 images (B, H, W, C) -> packed codes uint8 (B, ceil(bits / 8))."""

        def __init__(self, to_input: nn.Module, backbone: nn.Module | None, codes: nn.Module, bits: int) -> None:
            super().__init__()
            self.to_input, self.backbone, self.codes = to_input, backbone, codes
            self.pack = PackBits(bits)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = self.to_input(images)
            if self.backbone is not None:
                x = self.backbone(x)
            return self.pack(self.codes(x))

    _MODULES.update(ImageInput=ImageInput, PixelInput=PixelInput, BackboneOutput=BackboneOutput,
                    PackBits=PackBits, CodePipeline=CodePipeline)
    return _MODULES


_MODULES: dict[str, type] = {}


@dataclass
class Pipeline:
    """A run's encoder: ``module`` (:class:`CodePipeline`, eval mode, CPU) and its ``manifest``
    (what the exported files need to be used: input layout, preprocessing, bits, run)."""

    module: Any
    manifest: dict[str, Any]

    @property
    def bits(self) -> int:
        return int(self.manifest["bits"])


def _backbone_part(backbone: Any, output: str) -> tuple[Any, Any, dict[str, Any]]:
    """(ImageInput, BackboneOutput, preprocessing description) of a TimmBackbone."""
    m = _modules()
    cfg = backbone.data_config
    mode = backbone.resize_mode
    module = backbone.module.cpu().eval()
    to_input = m["ImageInput"](backbone.input_size, mode, list(cfg["mean"]), list(cfg["std"]))
    nhwc = str(getattr(module, "output_fmt", "NCHW")) == "NHWC"
    part = m["BackboneOutput"](module, output, backbone.num_prefix_tokens, nhwc)
    pre = {"resize": list(backbone.input_size), "interpolation": mode, "antialias": to_input.antialias,
           "scale": "1/255", "mean": list(cfg["mean"]), "std": list(cfg["std"]), "crop": None}
    return to_input, part, pre


def build_pipeline(record: RunRecord, method: Any, image_shape: tuple[int, ...]) -> Pipeline:
    """The encoder of the run ``record`` whose fitted ``method`` is given. ``image_shape``: one
    protocol image's shape, (H, W) grey or (H, W, 3) (fixes the input of raw-pixel runs)."""
    from .features import FeatureSpec, frozen_backbone

    m = _modules()
    config = RunConfig.from_dict(record.config)
    bits = config.bits
    channels = 1 if len(image_shape) == 2 else int(image_shape[2])
    backbone_info: dict[str, Any] | None
    if getattr(method, "input", "features") == "images":  # a deep method: its own backbone
        state = method._state
        to_input, part, pre = _backbone_part(state.backbone, method.backbone_output)
        backbone_info = {**backbone_identity(state.backbone), "output": method.backbone_output,
                         "trained": not state.backbone.config.frozen}
        size = None
    else:
        spec = FeatureSpec.resolve(config.features or {})
        if spec.backbone is None:
            to_input, part = m["PixelInput"](), None
            pre = {"pixels": "flattened row-major, / 255", "resize": None}
            backbone_info = None
            size = [int(image_shape[0]), int(image_shape[1])]
        else:
            backbone = frozen_backbone(spec.backbone, spec.pretrained, spec.input_size)
            to_input, part, pre = _backbone_part(backbone, "pooled")
            backbone_info = {**backbone_identity(backbone), "output": "pooled", "trained": False}
            size = None
    codes = method.encoder()
    if hasattr(codes, "cpu"):
        codes = codes.cpu().eval()
    module = m["CodePipeline"](to_input, part, codes, bits).eval()
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
        "run_id": record.run_id, "method": config.method, "label": record.label.method_label(), "bits": bits,
        "packed_bytes": math.ceil(bits / 8), "bit_order": "numpy.packbits (first bit = high bit of byte 0)",
        "dataset": config.dataset, "config_hash": record.run_id.rsplit("-", 1)[-1],
        "map": (record.metrics or {}).get("map"),
        "input": {"dtype": "uint8", "layout": "NHWC",
                  "channels": 3 if backbone_info is not None else channels,
                  "size": size, "grey_to_rgb": "repeat" if backbone_info is not None else None},
        "preprocessing": pre, "backbone": backbone_info,
    }
    return Pipeline(module, manifest)


# ----------------------------------------------------------------------------- images

def as_input(images: Any, manifest: dict[str, Any]) -> np.ndarray:
    """A uint8 batch of protocol images (N, H, W) or (N, H, W, 3) in the exported layout
    (N, H, W, C) of ``manifest["input"]`` (grey repeated to RGB for backbone encoders)."""
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise HashbenchError(f"images must be uint8, got {x.dtype}")
    channels = manifest["input"]["channels"]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise HashbenchError(f"images must be (N, H, W) or (N, H, W, 1|3), got {x.shape}")
    if x.shape[-1] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] != channels:
        raise HashbenchError(f"the encoder takes {channels}-channel images, got {x.shape[-1]}")
    size = manifest["input"]["size"]
    if size is not None and list(x.shape[1:3]) != list(size):
        raise HashbenchError(f"the encoder takes {size[0]}x{size[1]} images, got {x.shape[1]}x{x.shape[2]}")
    return np.ascontiguousarray(x)


def run_torch(module: Any, images: np.ndarray) -> np.ndarray:
    """Packed codes uint8 (N, W) of a (traced or eager) pipeline on NHWC uint8 ``images``."""
    import torch

    out = []
    with torch.inference_mode():
        for a, b in chunk_bounds(len(images), BATCH):
            out.append(module(torch.from_numpy(images[a:b])).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.uint8)


def onnx_session(path: str | Path) -> Any:
    """An onnxruntime CPU session of ``path`` (extra ``hashbench[export]``)."""
    try:
        import onnxruntime
    except ImportError:
        raise HashbenchError("checking ONNX needs onnxruntime: pip install 'hashbench[export]'") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, images: np.ndarray) -> np.ndarray:
    """Packed codes uint8 (N, W) of an onnxruntime session on NHWC uint8 ``images``."""
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: images[a:b]})[0] for a, b in chunk_bounds(len(images), BATCH)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.uint8)


# ----------------------------------------------------------------------------- export

def _to_torchscript(pipeline: Pipeline, example: np.ndarray) -> bytes:
    import torch

    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(pipeline.module, torch.from_numpy(example), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"manifest.json": json.dumps(pipeline.manifest)})
    return buffer.getvalue()


def load_torchscript(source: str | Path | bytes) -> Any:
    """A saved TorchScript encoder (a path or its bytes), on the CPU, without torch's
    deprecation warnings."""
    import torch

    with _quiet():
        return torch.jit.load(io.BytesIO(source) if isinstance(source, bytes) else str(source), map_location="cpu")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch's FutureWarnings about TorchScript (the format users asked for) off."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _to_onnx(pipeline: Pipeline, example: np.ndarray, path: Path) -> None:
    import os

    import torch

    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise HashbenchError("ONNX export needs onnx and onnxscript: pip install 'hashbench[export]'") from None
    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=65536)}
    if pipeline.manifest["input"]["size"] is None:
        dims[1] = torch.export.Dim("height", min=8, max=8192)
        dims[2] = torch.export.Dim("width", min=8, max=8192)
    # a batch of 2 at least: a dimension of size 1 in the example is taken as fixed
    x = torch.from_numpy(np.concatenate([example, example])[: max(2, len(example))])
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(pipeline.module, (x,), str(tmp), input_names=["images"], output_names=["codes"],
                              dynamic_shapes=(dims,), dynamo=True, external_data=False, verbose=False)
        os.replace(tmp, path)
    except HashbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter's many errors, one line
        raise HashbenchError(f"ONNX export failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    finally:
        tmp.unlink(missing_ok=True)


def compare_codes(got: np.ndarray, expected: np.ndarray, bits: int) -> dict[str, Any]:
    """How packed codes ``got`` differ from ``expected`` (uint8 (N, W)): items, differing
    bits and items, and ``equal``."""
    if got.shape != expected.shape:
        return {"items": int(len(expected)), "equal": False, "differing_bits": None,
                "why": f"shape {got.shape} instead of {expected.shape}"}
    diff = unpack_codes(got, bits) != unpack_codes(expected, bits)
    return {"items": int(len(expected)), "equal": not diff.any(), "differing_bits": int(diff.sum()),
            "differing_items": int(diff.any(axis=1).sum())}


def check_images(record: RunRecord) -> None:
    """HashbenchError unless the run's protocol gives images (an encoder takes images)."""
    from .registry import registry

    dataset = record.config["dataset"]
    if "images" not in getattr(registry("dataset").get(dataset), "provides", ()):
        raise HashbenchError(f"run {record.run_id}: protocol {dataset} gives feature vectors, not images; "
                             f"an exported encoder takes images (export a run on an image protocol)")


def query_images(record: RunRecord) -> Any:
    """The run's query split images (x of its protocol's query split, loaded as the run did)."""
    from .runner import _load_splits

    config = RunConfig.from_dict(record.config)
    _, splits = _load_splits(config.dataset, json.dumps(config.dataset_params, sort_keys=True))
    return splits.query.x


def reference_codes(record: RunRecord, method: Any) -> np.ndarray:
    """Packed codes of the run's query split by the restored ``method``, on the input the run
    gave it (images, or the features the runner made of them)."""
    from .runner import _load_features, _load_splits

    config = RunConfig.from_dict(record.config)
    params = json.dumps(config.dataset_params, sort_keys=True)
    if config.features:
        splits, _ = _load_features(config.dataset, params, json.dumps(config.features, sort_keys=True))
    else:
        _, splits = _load_splits(config.dataset, params)
    return pack_codes(method.encode(splits.query.x))


def encode_grouped(run: Callable[[np.ndarray], np.ndarray], images: Sequence[np.ndarray],
                   manifest: dict[str, Any]) -> np.ndarray:
    """Packed codes uint8 (N, W) of images (each uint8 (H, W[, C]), any sizes) by ``run`` (a
    batch function on the exported layout, :func:`run_torch` / :func:`run_onnx`): images of one
    size are encoded together, in the order given back."""
    out = np.zeros((len(images), manifest["packed_bytes"]), np.uint8)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    for rows in groups.values():
        out[rows] = run(as_input(np.stack([images[i] for i in rows]), manifest))
    return out


def image_list(x: Any) -> list[np.ndarray]:
    """Split images as a list of uint8 arrays (an array's rows, or each file of ImageFiles read)."""
    return list(x) if isinstance(x, np.ndarray) else [x[i] for i in range(len(x))]


def export_run(store: RunStore, spec: str, out: Path | None = None,
               formats: tuple[str, ...] = FORMATS) -> dict[str, Any]:
    """Export run ``spec`` (:func:`resolve_run`) to ``out`` (default ``exports/<run-id>/`` of
    the results folder) in ``formats``, check every file on the run's query images against
    the codes the run evaluated, and write ``manifest.json`` (atomically, last). Returns the
    manifest, whose ``files`` {format: {file, sha256, bytes}} and ``checks`` {format: {items,
    equal, differing_bits, differing_items, reference}} say what was written and found."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise HashbenchError(f"--format must be among {', '.join(FORMATS)}, got {','.join(formats) or 'nothing'}")
    record = resolve_run(store, spec)
    check_images(record)
    method = fitted_method(store, record)
    query = image_list(query_images(record))
    pipeline = build_pipeline(record, method, query[0].shape)
    out = Path(out) if out is not None else store.results_dir / "exports" / record.run_id
    out.mkdir(parents=True, exist_ok=True)
    # the reference: what the run evaluated (its digest), else this process's encode of the queries
    from .runner import codes_digest

    expected = reference_codes(record, method)
    reference = "the run's query codes (SHA-256 in its record)"
    if codes_digest(expected) != record.model["query_codes_sha256"]:
        raise HashbenchError(f"run {record.run_id}: the restored method does not reproduce the run's query codes "
                             f"(another backbone, weights or library version?): not exported")
    manifest = dict(pipeline.manifest)
    manifest["files"], manifest["checks"] = {}, {}
    first = [im for im in query if im.shape == query[0].shape]
    example = as_input(np.stack(first[:MIN_FORWARD]), pipeline.manifest)
    for fmt in formats:
        path = out / FILES[fmt]
        if fmt == "torchscript":
            atomic_write_bytes(path, _to_torchscript(pipeline, example))
            module = load_torchscript(path)
            got = encode_grouped(lambda x: run_torch(module, x), query, pipeline.manifest)
        else:
            _to_onnx(pipeline, example, path)
            session = onnx_session(path)
            got = encode_grouped(lambda x: run_onnx(session, x), query, pipeline.manifest)
        data = path.read_bytes()
        manifest["files"][fmt] = {"file": path.name, "sha256": sha256(data), "bytes": len(data)}
        manifest["checks"][fmt] = {**compare_codes(got, expected, pipeline.bits), "reference": reference}
    atomic_write_json(out / "manifest.json", manifest)
    manifest["folder"] = str(out)
    return manifest

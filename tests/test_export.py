"""From a run to a searchable index: saved models, export (TorchScript, ONNX), index, search.

Every run here is on the 8x8 test protocol "tiny-images" (20 queries) with timm's tiny
``test_efficientnet`` (random weights, 32 px) or raw pixels, so each fit takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hashbench.evaluate import map_at_k
from hashbench.export import FILES, load_torchscript, run_onnx, onnx_session
from hashbench.index import Index, IndexFileError, folder_files
from hashbench.store import RunStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BACKBONE = ["--backbone", "test_efficientnet", "--pretrained", "false", "--input-size", "32"]


def deep(method: str, *extra: str) -> list[str]:
    """--set flags putting deep ``method`` on the tiny backbone for 2 short epochs."""
    sets = ["backbone=test_efficientnet", "pretrained=false", "input_size=32", "epochs=2", "bank_views=2",
            "val_every=1", *extra]
    return [arg for s in sets for arg in ("--set", f"{method}.{s}")]


@pytest.fixture
def tiny(with_plugin, tiny_images, tmp_path, cli):
    """``run(methods, *flags) -> {method: record}``: runs on tiny-images into tmp_path/results."""
    with_plugin(register_datasets=lambda: [tiny_images])
    results = tmp_path / "results"

    def run(methods: str, *flags: str) -> dict:
        code, _, err = cli("run", "--methods", methods, "--datasets", "tiny-images", "--bits", "16", "--seeds", "0",
                           "--no-progress", "--no-table", "--results-dir", str(results), *flags)
        assert code == 0, err
        return {r.config["method"]: r for r in RunStore(results).records()}

    run.results = results
    return run


def query_input(store: RunStore, record, channels: int) -> np.ndarray:
    from hashbench.export import query_images

    x = np.asarray(query_images(record))[..., None]
    return np.repeat(x, channels, axis=-1) if channels == 3 else x


def digest(codes: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(codes).tobytes()).hexdigest()


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize("methods, flags, formats", [
    ("lsh,pcah,itq,sh", ["--backbone", "none"], "torchscript,onnx"),
    ("itq,sh", BACKBONE, "torchscript,onnx"),
    ("cibhash", deep("cibhash"), "torchscript,onnx"),
    ("wch", deep("wch", "hidden_dim=32"), "torchscript,onnx"),
    ("nsh", deep("nsh"), "torchscript"),
    ("greedyhash", deep("greedyhash"), "torchscript"),
    ("bihalf", deep("bihalf"), "torchscript"),
    ("cibhash", deep("cibhash", "frozen=false", "bank_views=0"), "torchscript,onnx"),
], ids=["shallow-pixels", "shallow-backbone", "cibhash", "wch-tokens", "nsh", "greedyhash", "bihalf",
        "cibhash-finetuned"])
def test_exported_encoders_give_the_runs_codes_bit_for_bit(tiny, cli, methods, flags, formats):
    """The exported files, loaded on their own (torch.jit.load, onnxruntime), turn the run's
    uint8 query images into packed codes whose SHA-256 is the one the run recorded of the codes
    it evaluated."""
    records = tiny(methods, *flags)
    store = RunStore(tiny.results)
    for method, record in records.items():
        assert record.model is not None and store.model_path(record.run_id).is_file()
        code, out, err = cli("export", record.run_id, "--results-dir", str(tiny.results), "--format", formats)
        assert code == 0, err
        assert out.count("equal, bit for bit") == len(formats.split(","))
        folder = tiny.results / "exports" / record.run_id
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["run_id"] == record.run_id and manifest["bits"] == 16 and manifest["packed_bytes"] == 2
        images = query_input(store, record, manifest["input"]["channels"])
        codes = {"torchscript": lambda: load_torchscript(folder / FILES["torchscript"])(
            __import__("torch").from_numpy(images)).numpy()}
        if "onnx" in formats:
            codes["onnx"] = lambda: run_onnx(onnx_session(folder / FILES["onnx"]), images)
        for fmt, make in codes.items():
            got = make()
            assert got.dtype == np.uint8 and got.shape == (20, 2), (method, fmt)
            assert digest(got) == record.model["query_codes_sha256"], (method, fmt)
            assert manifest["checks"][fmt]["equal"] and manifest["checks"][fmt]["differing_bits"] == 0


def test_a_backbone_encoder_takes_any_image_size_and_rgb(tiny):
    """An exported backbone encoder resizes inside the model: a 8x8 grey image repeated to RGB
    and the same image enlarged 3x by repetition (another size) both give codes; the 8x8 ones
    equal the run's."""
    import torch

    record = tiny("itq", *BACKBONE)["itq"]
    from hashbench.cli import main

    assert main(["export", record.run_id, "--results-dir", str(tiny.results), "--format", "torchscript"]) == 0
    encoder = load_torchscript(tiny.results / "exports" / record.run_id / "encoder.pt")
    images = query_input(RunStore(tiny.results), record, 3)
    big = np.repeat(np.repeat(images, 3, axis=1), 5, axis=2)  # 24 x 40
    assert encoder(torch.from_numpy(big)).shape == (20, 2)
    assert digest(encoder(torch.from_numpy(images)).numpy()) == record.model["query_codes_sha256"]


def test_export_errors_are_one_line(tiny, cli, one_line_error):
    records = tiny("itq", "--backbone", "none")
    run_id = records["itq"].run_id
    results = str(tiny.results)
    code, _, err = cli("export", "no-such-run", "--results-dir", results)
    assert code != 0 and "no run 'no-such-run'" in one_line_error(err)
    code, _, err = cli("export", run_id, "--results-dir", results, "--format", "tflite")
    assert code != 0 and "--format must be among" in one_line_error(err)
    code, _, err = cli("export", "best:nsh", "--results-dir", results)
    assert code != 0 and "no done run with a saved model" in one_line_error(err)
    # a model file that is not the one its record names
    path = RunStore(tiny.results).model_path(run_id)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    code, _, err = cli("export", run_id, "--results-dir", results)
    assert code != 0 and "not the model file its record names" in one_line_error(err)
    path.unlink()
    code, _, err = cli("export", run_id, "--results-dir", results)
    assert code != 0 and "cannot read its model file" in one_line_error(err)


def test_a_run_without_a_model_and_a_feature_protocol_cannot_be_exported(tiny, cli, one_line_error, tmp_path):
    record = tiny("lsh", "--backbone", "none", "--no-models")["lsh"]
    assert record.model is None and not RunStore(tiny.results).model_path(record.run_id).exists()
    code, _, err = cli("export", record.run_id, "--results-dir", str(tiny.results))
    assert code != 0 and "kept no model" in one_line_error(err)
    other = tmp_path / "digits"
    assert cli("run", "--methods", "lsh", "--datasets", "digits", "--bits", "8", "--seeds", "0", "--no-progress",
               "--no-table", "--results-dir", str(other))[0] == 0
    (digits,) = RunStore(other).records()
    code, _, err = cli("export", digits.run_id, "--results-dir", str(other))
    assert code != 0 and "gives feature vectors, not images" in one_line_error(err)


def test_best_picks_the_highest_map_run_and_superseded_runs_keep_their_model(tiny, cli):
    from hashbench.export import resolve_run

    records = tiny("lsh", "--backbone", "none", "--seeds", "0,1,2")
    store = RunStore(tiny.results)
    runs = [r for r in store.records() if r.config["method"] == "lsh"]
    assert len(runs) == 3 and records
    best = max(runs, key=lambda r: r.metrics["map"])
    assert resolve_run(store, "best:lsh").run_id == best.run_id
    assert resolve_run(store, "best:lsh@16").run_id == best.run_id
    # --force: the old record and its model move to superseded/ together
    tiny("lsh", "--backbone", "none", "--force")
    superseded = sorted(p.name for p in (tiny.results / "runs" / "superseded").iterdir())
    assert any(n.endswith(".model.pt") for n in superseded) and any(n.endswith(".json") for n in superseded)


def test_a_record_naming_another_model_file_is_invalid(tiny, tmp_path):
    from hashbench.store import UnreadableRecord, check_record

    record = tiny("lsh", "--backbone", "none")["lsh"]
    data = record.to_dict()
    data["model"] = {**data["model"], "file": "other.model.pt"}
    with pytest.raises(UnreadableRecord, match="model.file"):
        check_record(data, Path(f"{record.run_id}.json"))


# ----------------------------------------------------------------------------- index and search

def write_folder(root: Path, rng: np.random.Generator) -> None:
    """Nested images of two kinds (bright top-left vs bottom-right squares), PNG and JPEG, grey
    and RGB, of several sizes; one file that is not an image; a hidden file."""
    from PIL import Image

    for kind, (r0, c0) in {"tops": (0, 0), "bottoms": (4, 4)}.items():
        (root / kind).mkdir(parents=True)
        for i in range(6):
            side = 8 * (1 + i % 3)
            x = rng.integers(0, 60, (side, side), dtype=np.uint8)
            s = side // 2
            x[r0 * side // 8:r0 * side // 8 + s, c0 * side // 8:c0 * side // 8 + s] += 180
            image = Image.fromarray(x)
            if i % 2:
                image.convert("RGB").save(root / kind / f"{i}.jpg", quality=95)
            else:
                image.save(root / kind / f"{i}.png")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")


def test_index_a_folder_search_it_and_update_it(tiny, cli, tmp_path, one_line_error):
    record = tiny("itq", *BACKBONE)["itq"]
    root = tmp_path / "photos"
    write_folder(root, np.random.default_rng(0))
    outside = tmp_path / "outside.png"
    (root / "tops" / "0.png").rename(outside)
    os.symlink(outside, root / "tops" / "link.png")  # leads out of the folder: not indexed
    out = tmp_path / "photos.hbi"
    results = str(tiny.results)
    code, _, err = cli("index", record.run_id, "--images", str(root), "--out", str(out), "--folder-labels",
                       "--results-dir", results, "--no-progress")
    assert code == 0, err
    assert "skipped notes.txt: not a readable image" in err and "11 items (11 encoded, 0 unchanged" in err
    index = Index.load(out)
    assert [it["path"] for it in index.items] == [p for p in folder_files(root) if p != "notes.txt"]
    assert "tops/link.png" not in folder_files(root)
    assert index.manifest["labels"]["names"] == ["bottoms", "tops"]
    assert index.manifest["skipped"] == [{"path": "notes.txt", "why": index.manifest["skipped"][0]["why"]}]
    # every indexed file's code is what the run's encoder gives the image (search by itself: distance 0)
    query = root / "bottoms" / "2.png"
    code, out_text, err = cli("search", str(out), str(query), "-k", "11", "--format", "json")
    assert code == 0, err
    (hits,) = json.loads(out_text)
    distances = [h["distance"] for h in hits["results"]]
    assert distances == sorted(distances) and len(distances) == 11
    own = [h for h in hits["results"] if h["item"] == "bottoms/2.png"]
    assert own and own[0]["distance"] == 0
    # ties come in item order (stable)
    positions = {it["path"]: i for i, it in enumerate(index.items)}
    for a, b in zip(hits["results"], hits["results"][1:]):
        if a["distance"] == b["distance"]:
            assert positions[a["item"]] < positions[b["item"]]
    # --radius: exactly the items within it
    code, out_text, _ = cli("search", str(out), str(query), "--radius", "3", "--format", "json")
    inside = [h["distance"] for h in json.loads(out_text)[0]["results"]]
    assert all(d <= 3 for d in inside) and len(inside) == sum(d <= 3 for d in distances)
    # update: one new file, one changed, one removed -> only two encoded
    from PIL import Image

    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(root / "tops" / "new.png")
    changed = root / "tops" / "2.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    (root / "bottoms" / "5.jpg").unlink()
    code, _, err = cli("index", record.run_id, "--images", str(root), "--out", str(out), "--folder-labels",
                       "--results-dir", results, "--no-progress")
    assert code == 0 and "11 items (2 encoded, 9 unchanged, 1 removed, 1 skipped)" in err, err
    updated = Index.load(out)
    again = dict(zip((it["path"] for it in updated.items), updated.codes.tolist()))
    first = dict(zip((it["path"] for it in index.items), index.codes.tolist()))
    assert all(again[p] == first[p] for p in first if p in again and p not in ("tops/2.png",))
    # an index of another run at the same --out is refused
    other = tiny("pcah", *BACKBONE)["pcah"]
    code, _, err = cli("index", other.run_id, "--images", str(root), "--out", str(out), "--results-dir", results)
    assert code != 0 and "an index of run" in one_line_error(err)


def test_a_split_index_holds_the_codes_the_run_evaluated(tiny, cli, tmp_path):
    """Index the database split, encode the query split with the index's encoder: the mAP of
    those codes is the run's mAP exactly (the same codes, as the run ranked them)."""
    from hashbench.export import query_images

    record = tiny("cibhash", *deep("cibhash"))["cibhash"]
    out = tmp_path / "db.hbi"
    code, _, err = cli("index", record.run_id, "--split", "database", "--out", str(out),
                       "--results-dir", str(tiny.results), "--no-progress")
    assert code == 0, err
    index = Index.load(out)
    assert len(index) == 80 and index.manifest["source"]["split"] == "database"
    queries = list(np.asarray(query_images(record))[..., None])
    q = index.encode(queries)
    assert digest(q) == record.model["query_codes_sha256"]
    from hashbench.runner import _load_splits

    _, splits = _load_splits("tiny-images", "{}")
    got = map_at_k(q, index.codes, splits.query.labels, index.labels, bits=16, topk=None)
    assert got == pytest.approx(record.metrics["map"], abs=1e-12)


def test_a_corrupt_or_foreign_index_is_one_clear_error(tiny, cli, tmp_path, one_line_error):
    record = tiny("lsh", "--backbone", "none")["lsh"]
    out = tmp_path / "q.hbi"
    assert cli("index", record.run_id, "--split", "query", "--out", str(out), "--results-dir",
               str(tiny.results), "--no-progress")[0] == 0
    query = tmp_path / "q.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(query)
    assert cli("search", str(out), str(query))[0] == 0
    data = out.read_bytes()
    cases = {}
    cases["truncated"] = data[: len(data) // 2]
    with zipfile.ZipFile(out) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    manifest = json.loads(members["manifest.json"])

    def rezip(changed: dict) -> bytes:
        import io

        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, body in {**members, **changed}.items():
                archive.writestr(name, body)
        return buffer.getvalue()

    flipped = bytearray(members["codes.npy"])
    flipped[-1] ^= 1
    cases["codes changed"] = rezip({"codes.npy": bytes(flipped)})
    cases["newer version"] = rezip({"manifest.json": json.dumps({**manifest, "version": 99})})
    cases["another format"] = rezip({"manifest.json": json.dumps({**manifest, "format": "x"})})
    cases["not a zip"] = b"hello"
    expected = {"truncated": "not a hashbench index", "codes changed": "does not match its checksum",
                "newer version": "index version 99", "another format": "not a hashbench-index file",
                "not a zip": "not a hashbench index"}
    for case, body in cases.items():
        bad = tmp_path / f"{case}.hbi"
        bad.write_bytes(body)
        with pytest.raises(IndexFileError, match=expected[case]):
            Index.load(bad)
        code, _, err = cli("search", str(bad), str(query))
        assert code != 0 and expected[case] in one_line_error(err), case
    code, _, err = cli("search", str(out), str(tmp_path / "missing.png"))
    assert code != 0 and "not a readable image" in one_line_error(err)


def test_onnx_export_without_its_extra_is_one_clear_error(tiny, cli, one_line_error, monkeypatch):
    import sys

    record = tiny("lsh", "--backbone", "none")["lsh"]
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    code, _, err = cli("export", record.run_id, "--results-dir", str(tiny.results), "--format", "onnx")
    assert code != 0 and "pip install 'hashbench[export]'" in one_line_error(err)


def test_a_run_on_image_files_of_several_sizes_exports_and_checks(with_plugin, cli, tmp_path):
    """Query images stored as files of several sizes (as NUS-WIDE and COCO list files give):
    the check encodes each size group on its own and still finds the run's codes."""
    from dataclasses import dataclass

    from PIL import Image

    from hashbench.components import Protocol, Splits
    from hashbench.data.images import ImageFiles

    root = tmp_path / "files"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        side = (8, 12, 16)[i % 3]
        x = rng.integers(0, 80, (side, side + i % 2, 3), dtype=np.uint8)
        x[: side // 2] += 150 * (i % 2)  # class 1: bright top half
        Image.fromarray(x).save(root / f"{i:02d}.png")

    class MixedFiles(Protocol):
        name = "mixed-files"
        summary = "24 PNG files of 6 sizes (test only)"
        provides = ("images",)
        num_classes = 2

        @dataclass(frozen=True)
        class Config:
            root: str = ""

        def load(self):
            paths = sorted(p.name for p in Path(self.config.root).iterdir())
            x, y = ImageFiles(self.config.root, paths), np.arange(len(paths)) % 2
            ids = np.arange(len(paths))
            return Splits.from_ids(x, y, train=ids[6:], val=ids[:0], query=ids[:6], database=ids[6:])

    with_plugin(register_datasets=lambda: [MixedFiles])
    results = tmp_path / "results"
    code, _, err = cli("run", "--methods", "itq", "--datasets", "mixed-files", "--bits", "8", "--seeds", "0",
                       "--set", f"mixed-files.root={root}", *BACKBONE, "--no-progress", "--no-table",
                       "--results-dir", str(results))
    assert code == 0, err
    (record,) = RunStore(results).records()
    code, out, err = cli("export", record.run_id, "--results-dir", str(results))
    assert code == 0, err
    assert out.count("codes of 6 query images vs the run's: equal, bit for bit") == 2

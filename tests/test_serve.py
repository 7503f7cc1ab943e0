"""``hashbench serve``: the JSON API (FastAPI's TestClient), its limits and errors, the real
server (uvicorn in a thread, raw HTTP), the CLI, and the page in headless Chromium (Playwright).

No model is trained: the index is made directly, with a tiny traced TorchScript encoder
(colour of the image's quadrants -> 16 bits) over a folder of 4 colour classes x 6 PNGs.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402

from hashbench import __version__  # noqa: E402
from hashbench.errors import HashbenchError  # noqa: E402
from hashbench.index import INDEX_FORMAT, INDEX_VERSION, Index, encode_images, read_image  # noqa: E402
from hashbench.report import find_chromium  # noqa: E402
from hashbench.serve import MAX_K, background_server, create_app, launch_chromium  # noqa: E402

COLOURS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30), "yellow": (230, 220, 40)}
PER_CLASS = 6
SECRET = "TOPSECRET-7f3a"


# ----------------------------------------------------------------------------- a tiny index

def encoder_bytes(channels: int, bits: int) -> bytes:
    """A traced TorchScript encoder: uint8 (B, H, W, C) -> packed uint8 (B, bits / 8): each
    channel's mean over the 2x2 quadrants and the whole image, thresholded."""
    import torch
    import torch.nn.functional as F

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("weights", torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int32))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.permute(0, 3, 1, 2).float()
            quadrants = F.adaptive_avg_pool2d(x, (2, 2)).flatten(1)
            means = x.mean(dim=(2, 3))
            if channels == 3:
                bits_ = torch.cat([quadrants > 127.5, means > 90.0, means.mean(1, keepdim=True) > 90.0], 1)
            else:
                bits_ = torch.cat([quadrants > 120.0, quadrants > 20.0], 1)
            b = bits_.to(torch.int32).reshape(images.shape[0], -1, 8)
            return (b * self.weights).sum(-1).to(torch.uint8)

    from hashbench.export import _quiet

    example = torch.zeros((2, 8, 8, channels), dtype=torch.uint8)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(Tiny().eval(), example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def encoder_manifest(channels: int, bits: int, size: list[int] | None) -> dict:
    """An export manifest shaped like hashbench.export.build_pipeline's."""
    return {"format": "hashbench-encoder", "version": 1, "run_id": "tiny-test-0000", "method": "tiny",
            "label": "tiny", "bits": bits, "packed_bytes": bits // 8,
            "bit_order": "numpy.packbits (first bit = high bit of byte 0)", "dataset": "test", "config_hash": "0000",
            "map": 0.625, "input": {"dtype": "uint8", "layout": "NHWC", "channels": channels, "size": size,
                                    "grey_to_rgb": "repeat" if size is None else None},
            "preprocessing": {"pixels": "test"}, "backbone": None,
            "checks": {"torchscript": {"items": 0, "equal": True, "differing_bits": 0}}}


def index_manifest(enc: dict, source: dict, count: int, names: list[str] | None) -> dict:
    """An index manifest shaped like hashbench.index.build_index's."""
    return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "created": "2026-01-01T00:00:00+00:00",
            "hashbench": __version__,
            "run": {"run_id": enc["run_id"], "method": "tiny", "label": "tiny", "bits": enc["bits"],
                    "dataset": enc["dataset"], "map": enc["map"]},
            "encoder": enc, "source": source, "count": count,
            "labels": None if names is None else {"kind": "single", "names": names}, "skipped": []}


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def colour_image(colour: tuple[int, int, int], i: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy image of ``colour`` (size varies with i), quadrant i % 4 darkened when i > 0."""
    h, w = 24 + 4 * i, 24 + 2 * i
    image = np.clip(np.array(colour) + rng.normal(0, 12, (h, w, 3)), 0, 255)
    if i:
        r, q = divmod(i % 4, 2)
        image[r * h // 2:(r + 1) * h // 2, q * w // 2:(q + 1) * w // 2] *= 0.2
    return image.astype(np.uint8)


def make_folder_index(base: Path, enc_bytes: bytes) -> Index:
    """4 colour folders x 6 PNGs under base/images, labelled by folder, saved to base/tiny.hbi."""
    rng = np.random.default_rng(0)
    root = base / "images"
    rels = []
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            (root / name / f"{i}.png").write_bytes(png(colour_image(colour, i, rng)))
            rels.append(f"{name}/{i}.png")
    (base / "secret.txt").write_text(SECRET)  # outside the indexed root
    enc = encoder_manifest(3, 16, None)
    module = _load(enc_bytes)
    images = [read_image(root / rel, enc) for rel in rels]
    codes = encode_images(module, images, enc)
    names = sorted(COLOURS)
    labels = np.array([names.index(rel.split("/")[0]) for rel in rels], dtype=np.int64)
    items = [{"path": rel, "size": (root / rel).stat().st_size, "mtime_ns": (root / rel).stat().st_mtime_ns}
             for rel in rels]
    manifest = index_manifest(enc, {"kind": "folder", "root": str(root.resolve())}, len(rels), names)
    Index(manifest, codes, items, labels, enc_bytes).save(base / "tiny.hbi")
    return Index.load(base / "tiny.hbi")


def _load(data: bytes):
    from hashbench.export import load_torchscript

    return load_torchscript(data)


@pytest.fixture(scope="module")
def rgb_encoder() -> bytes:
    return encoder_bytes(3, 16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, rgb_encoder) -> Index:
    return make_folder_index(tmp_path_factory.mktemp("serve"), rgb_encoder)


@pytest.fixture(scope="module")
def client(folder):
    with TestClient(create_app(folder, k=5)) as c:
        yield c


def red_png(size: int = 40) -> bytes:
    """A noisy red size x size PNG (the same bytes each call)."""
    rng = np.random.default_rng(1)
    return png(np.clip(np.array(COLOURS["red"]) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming width x height grey pixels, then an empty IDAT and IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def assert_sorted_results(data: dict, k: int) -> None:
    distances = [r["distance"] for r in data["results"]]
    assert len(distances) == k and distances == sorted(distances)
    assert [r["rank"] for r in data["results"]] == list(range(1, k + 1))


# ----------------------------------------------------------------------------- the API

def test_upload_gives_k_results_sorted_by_distance(client, folder):
    response = client.post("/search", files={"file": ("red.png", red_png(), "image/png")})
    assert response.status_code == 200, response.text
    data = response.json()
    assert_sorted_results(data, 5)
    assert data["precision_at_k"] is None  # an upload has no label
    assert data["query"] == {"kind": "upload", "name": "red.png", "width": 40, "height": 40,
                             "bytes": len(red_png())}
    top = data["results"][0]
    assert top["labels"] == ["red"] and top["name"].startswith("red/") and top["distance"] == 0
    assert top["image"] == f"/items/{top['item']}/image" and top["name"] == folder.describe(top["item"])
    # k from the form; the same ranking as Index.search
    data = client.post("/search", files={"file": ("red.png", red_png(), "image/png")}, data={"k": "12"}).json()
    assert_sorted_results(data, 12)
    code = folder.encode([read_image(red_png(), folder.encoder_manifest)])
    assert [(r["item"], r["distance"]) for r in data["results"]] == folder.search(code, 12)[0]


def test_item_query_gives_precision_at_k(client, folder):
    data = client.get("/search", params={"item": 0, "k": 6}).json()
    assert_sorted_results(data, 6)
    assert data["query"]["kind"] == "item" and data["query"]["labels"] == ["blue"]
    assert data["results"][0]["item"] == 0 and data["results"][0]["distance"] == 0  # the query itself
    shared = [r["labels"] == ["blue"] for r in data["results"]]
    assert data["precision_at_k"] == sum(shared) / 6 == 1.0
    assert [r["relevant"] for r in data["results"]] == shared
    data = client.get("/search", params={"item": 0, "k": 8}).json()
    assert data["precision_at_k"] == 0.75  # the 6 blue ones first, then 2 of another colour


def test_index_summary_and_item_images(client, folder):
    data = client.get("/api/index").json()
    assert data["count"] == 24 and data["bits"] == 16 and data["run"]["label"] == "tiny"
    assert data["labels"] == {"kind": "single", "names": sorted(COLOURS)} and data["k"] == 5
    assert data["source"] == {"kind": "folder", "description": "folder images"}  # no absolute path
    assert len(data["samples"]) == 12 and data["samples"][0] == 0 and data["samples"][-1] == 23
    response = client.get("/items/23/image")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == "PNG" and image.size == Image.open(folder.file_path(23)).size
    assert response.headers["x-content-type-options"] == "nosniff"


def test_page_is_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "tiny (tiny), run tiny-test-0000" in page and "16 bits · mAP 0.625 · 24 items" in page
    assert 'type="file"' in page and "precision@k" in page and "among its own results" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page  # nothing external
    assert "default-src 'none'" in response.headers["content-security-policy"]


def upload(client, data: bytes, name: str = "x.png", **form):
    return client.post("/search", files={"file": (name, data, "application/octet-stream")}, data=form)


def chunked_multipart(total: int):
    """A multipart body streamed without Content-Length (chunked), ``total`` bytes of file data."""
    def body():
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        for _ in range(total // 4096):
            yield b"\0" * 4096
        yield b"\r\n--xyz--\r\n"

    return body()


# (the client normalises literal dot segments such as /items/../../etc/passwd or /static/../..
# before sending; test_path_traversal_on_the_wire sends those as they are)
BAD_INPUTS = {
    "text, not an image": (415, lambda c, small: upload(c, b"hello, I am not an image\n" * 20, "notes.txt")),
    "empty file": (415, lambda c, small: upload(c, b"")),
    "truncated PNG": (415, lambda c, small: upload(c, red_png()[:200])),
    "Content-Length over the limit": (413, lambda c, small: upload(small, os.urandom(200_000))),
    "chunked body over the limit": (413, lambda c, small: small.post(
        "/search", content=chunked_multipart(200_000), headers={"content-type": "multipart/form-data; boundary=xyz"})),
    "file over the limit, body within it": (413, lambda c, small: upload(small, os.urandom(12_000))),
    "8000x8000 PNG (64 Mpx > MAX_PIXELS)": (413, lambda c, small: upload(c, png(np.zeros((8000, 8000), np.uint8)))),
    "100000x100000 PNG header (PIL bomb)": (413, lambda c, small: upload(c, png_header_only(100_000, 100_000))),
    "k=0": (422, lambda c, small: upload(c, red_png(), k="0")),
    "k=1000": (422, lambda c, small: upload(c, red_png(), k="1000")),
    "k=abc": (422, lambda c, small: upload(c, red_png(), k="abc")),
    "GET k=0": (422, lambda c, small: c.get("/search?item=0&k=0")),
    "GET k=1000": (422, lambda c, small: c.get("/search?item=0&k=1000")),
    "no file field": (422, lambda c, small: c.post("/search", files={"other": ("x.png", red_png())})),
    "not multipart": (415, lambda c, small: c.post("/search", data={"k": "3"})),
    "malformed multipart": (400, lambda c, small: c.post("/search", content=b"garbage",
                                                         headers={"content-type": "multipart/form-data"})),
    "GET /search without item": (422, lambda c, small: c.get("/search")),
    "item out of range": (404, lambda c, small: c.get("/search?item=24")),
    "item negative": (404, lambda c, small: c.get("/search?item=-1")),
    "item not an integer": (422, lambda c, small: c.get("/search?item=abc")),
    "image of item out of range": (404, lambda c, small: c.get("/items/999999999999999999999/image")),
    "image of item -1": (404, lambda c, small: c.get("/items/-1/image")),
    "image of item 'abc'": (422, lambda c, small: c.get("/items/abc/image")),
    "/items/%2e%2e%2fetc%2fpasswd/image": (404, lambda c, small: c.get("/items/%2e%2e%2fetc%2fpasswd/image")),
    "/items/..%2f..%2fsecret.txt/image": (404, lambda c, small: c.get("/items/..%2f..%2fsecret.txt/image")),
    "/docs (disabled)": (404, lambda c, small: c.get("/docs")),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_4xx_json_error_and_the_server_stays_up(client, folder, case):
    expected, send = BAD_INPUTS[case]
    with TestClient(create_app(folder, k=5, max_upload_mb=0.01)) as small:
        response = send(client, small)
        assert response.status_code == expected, (case, response.status_code, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail, detail
        assert SECRET not in response.text and "root:" not in response.text
        # both apps still answer
        assert upload(client, red_png()).status_code == 200
        assert upload(small, red_png(20)).status_code == 200


def test_error_details_say_what_is_wrong(client):
    assert "not an image" in upload(client, b"hello").json()["detail"]
    assert "more than the 40,000,000 allowed" in upload(client, png(np.zeros((8000, 8000), np.uint8))).json()["detail"]
    assert upload(client, red_png(), k="0").json()["detail"] == f"k must be between 1 and {MAX_K}, got 0"
    assert client.get("/search?item=24").json()["detail"] == "no item 24: this index holds items 0..23"
    assert "'file'" in client.post("/search", files={"other": ("x.png", red_png())}).json()["detail"]


def test_pixel_limit_is_a_parameter_and_read_at_request_time(folder, monkeypatch):
    with TestClient(create_app(folder, max_pixels=1000)) as c:
        response = upload(c, red_png(40))
        assert response.status_code == 413 and "1,600 pixels" not in response.json()["detail"]
        assert "40x40 pixels, more than the 1,000 allowed" in response.json()["detail"]
    monkeypatch.setattr("hashbench.index.MAX_PIXELS", 1000)
    with TestClient(create_app(folder)) as c:
        assert upload(c, red_png(40)).status_code == 413
        assert upload(c, red_png(30)).status_code == 200


def test_a_file_that_leaves_the_root_is_never_served(tmp_path, rgb_encoder):
    """An item whose file was replaced by a symlink out of the indexed folder: 404, nothing read."""
    index = make_folder_index(tmp_path, rgb_encoder)
    target = tmp_path / "images" / "blue" / "0.png"
    target.unlink()
    target.symlink_to(tmp_path / "secret.txt")
    (tmp_path / "images" / "blue" / "1.png").unlink()
    with TestClient(create_app(index)) as c:
        for pos in (0, 1):
            response = c.get(f"/items/{pos}/image")
            assert response.status_code == 404 and SECRET not in response.text
            assert "missing or outside" in response.json()["detail"]
        assert c.get("/items/2/image").status_code == 200


def test_split_index_serves_protocol_images(with_plugin, tiny_images, tmp_path):
    """An index of a protocol split: images come from the protocol, rendered as PNG; grey,
    fixed-size encoders take any uploaded image (converted and resized)."""
    with_plugin(register_datasets=lambda: [tiny_images])
    from hashbench.runner import _load_splits

    _, splits = _load_splits("tiny-images", "{}")
    part = splits.database
    enc = encoder_manifest(1, 8, [8, 8])
    data = encoder_bytes(1, 8)
    codes = encode_images(_load(data), [x[..., None] for x in part.x], enc)
    source = {"kind": "split", "dataset": "tiny-images", "dataset_params": {}, "split": "database"}
    manifest = index_manifest(enc, source, len(part), ["0", "1", "2", "3"])
    Index(manifest, codes, [{"id": int(i)} for i in part.index], np.asarray(part.labels, np.int64),
          data).save(tmp_path / "split.hbi")
    with TestClient(create_app(tmp_path / "split.hbi", k=10)) as c:
        response = c.get("/items/5/image")
        assert response.status_code == 200
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.size == (8, 8) and image.mode == "L"
            assert np.array_equal(np.asarray(image), part.x[5])
        data = c.get("/search?item=5").json()
        assert_sorted_results(data, 10)
        assert data["query"]["name"] == f"id {part.index[5]}" and data["precision_at_k"] == 1.0
        assert c.get("/api/index").json()["source"]["description"] == "tiny-images database split"
        rgb = np.repeat(np.kron(part.x[5], np.ones((4, 4), np.uint8))[..., None], 3, axis=-1)  # 32x32 RGB
        data = upload(c, png(rgb)).json()
        assert data["results"][0]["labels"] == [str(part.labels[5])]


def test_missing_fastapi_is_one_clear_error(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(HashbenchError, match=r"needs FastAPI and uvicorn: pip install 'hashbench\[serve\]'"):
        create_app(folder)


def test_bad_arguments(folder):
    with pytest.raises(HashbenchError, match="-k must be between 1 and 100"):
        create_app(folder, k=101)
    with pytest.raises(HashbenchError, match="--max-upload-mb must be positive"):
        create_app(folder, max_upload_mb=0)


# ----------------------------------------------------------------------------- the real server

@pytest.fixture(scope="module")
def live(folder):
    """The app on uvicorn in a thread, on a free port of 127.0.0.1: its base URL."""
    with background_server(create_app(folder, k=5)) as url:
        yield url


def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as is (no client-side path normalisation); (status, whole response)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    answer = b"".join(chunks)
    return int(answer.split(b" ", 2)[1]), answer


@pytest.mark.parametrize("path", ["/items/../../etc/passwd", "/items/%2e%2e%2fetc%2fpasswd/image",
                                  "/static/../..", "/items/0/../../../../secret.txt", "/../secret.txt",
                                  "/items/..%2F..%2Fsecret.txt/image", "/items/0%2f..%2f..%2fsecret.txt/image"])
def test_path_traversal_on_the_wire(live, path):
    status, answer = raw_request(live, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status == 404, answer[:300]
    assert SECRET.encode() not in answer and b"root:" not in answer


def test_lying_content_length_and_the_server_stays_up(live):
    """A body longer than its Content-Length, and a huge Content-Length: 4xx, then still 200."""
    prefix = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    body = prefix + red_png() + b"\r\n--xyz--\r\n"
    head = (b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
            b"Connection: close\r\n")
    status, answer = raw_request(live, head + b"Content-Length: 100\r\n\r\n" + body)
    assert status in (400, 422), answer  # the form cut after 100 bytes: malformed, or without its file
    status, answer = raw_request(live, head + b"Content-Length: 999999999999\r\n\r\n" + body)
    assert status == 413 and b"at most 8 MB" in answer
    status, answer = raw_request(live, head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert status == 200 and b'"results"' in answer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_serves_and_refuses_a_busy_port(folder, cli, one_line_error):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        code, _, err = cli("serve", str(folder.path), "--port", str(busy.getsockname()[1]))
    assert code == 2 and "cannot listen on 127.0.0.1:" in one_line_error(err)
    code, _, err = cli("serve", str(folder.path.with_name("nothing.hbi")))
    assert code == 2 and "no such index file" in one_line_error(err)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hashbench", "serve", str(folder.path), "--port", str(port),
                             "-k", "3"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        assert line == f"hashbench: serving {folder.path} (24 items) on http://127.0.0.1:{port}\n"
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(100):
            try:
                connection.request("GET", "/api/index")
                break
            except ConnectionRefusedError:
                time.sleep(0.1)
        data = json.loads(connection.getresponse().read())
        assert data["count"] == 24 and data["k"] == 3
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# ----------------------------------------------------------------------------- the page, in Chromium

@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if find_chromium() is None:
        pytest.skip("no Chromium executable (install chromium or set HASHBENCH_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


def test_page_end_to_end_in_headless_chromium(browser, live, tmp_path):
    query = tmp_path / "query.png"
    query.write_bytes(red_png())
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests, problems = [], []
    page.on("request", lambda r: requests.append(r.url))
    failed = []
    page.on("response", lambda r: failed.append((r.request.method, r.url, r.status)) if r.status >= 400 else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(live)
    assert "16 bits · mAP 0.625 · 24 items" in page.inner_text("header")
    page.wait_for_function("() => document.querySelectorAll('#samples img').length === 12")

    # upload a query image: exactly k result cards, distances non-decreasing, images decoded
    page.set_input_files("#file", str(query))
    page.wait_for_function("() => document.querySelectorAll('#results .card').length === 5")
    cards = page.locator("#results .card")
    distances = [int(d) for d in cards.evaluate_all("cs => cs.map(c => c.dataset.distance)")]
    assert len(distances) == 5 and distances == sorted(distances)
    assert page.inner_text("#results .card .name >> nth=0").startswith("red/")
    assert page.is_hidden("#precision")  # no label for an upload
    page.wait_for_function("() => [...document.images].filter(i => i.src).every(i => i.complete && i.naturalWidth > 0)")
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 1000

    # pick an indexed item: its labels and the precision@k badge
    page.click("#samples button >> nth=0")
    page.wait_for_function("() => !document.getElementById('precision').hidden")
    assert page.inner_text("#precision") == "precision@5 = 1.00 (5/5)"
    assert page.inner_text("#query-labels") == "blue"
    assert page.locator("#results .card.relevant").count() == 5

    # a file that is not an image: the error is shown, the page still works
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").startswith("415: ")
    page.set_input_files("#file", str(query))
    page.wait_for_function("() => document.querySelectorAll('#results .card').length === 5")
    assert page.is_hidden("#error")

    assert not problems, problems
    assert failed == [("POST", f"{live}/search", 415)], failed  # only the upload that is not an image
    assert all(u.startswith(live) or u.startswith("blob:") for u in requests), requests
    page.close()

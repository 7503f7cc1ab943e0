"""``hashbench serve INDEX``: a web page and a JSON API to search an index (extra ``hashbench[serve]``).

Routes (see docs/serving.md):

- ``GET /``: the search page (one self-contained HTML file: inline CSS and JS, no external fetch);
- ``POST /search`` (multipart: ``file``, optional ``k``): the top-k items of an uploaded image;
- ``GET /search?item=POS&k=K``: the top-k items of an indexed item (with precision@k when labelled);
- ``GET /api/index``: a JSON summary of the index;
- ``GET /items/{pos}/image``: the item's image as PNG (longest side at most :data:`THUMB` pixels).

Every bad request is a 4xx JSON ``{"detail": "one line"}``: 413 for an upload over the size
limit (its Content-Length, or the bytes actually sent, read in chunks up to the limit) or an
image over the pixel limit, 415 for what is not an image, 422 for a k outside 1..:data:`MAX_K`
or a missing field, 404 for an item position out of range and for any other path. The server
only ever reads files named by the index (``Index.file_path``, which refuses paths that leave
the indexed folder), by integer position; nothing the client sends is used as a path.
"""

import contextlib
import functools
import html
import io
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import HashbenchError
from .index import Index, read_image

#: the most results one query may ask for
MAX_K = 100
#: items shown in the page's strip of samples to pick from
SAMPLES = 12
#: the longest side of a served item image (larger ones are scaled down)
THUMB = 512
#: multipart framing allowed on top of the file itself (headers, boundary, the k field)
FORM_OVERHEAD = 16 * 1024
#: uploads decoded and encoded at the same time (each may hold a large image in memory)
WORKERS = 2
#: Chromium switches for headless use by the tests and docs/make_screenshot.py
BROWSER_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync", "--mute-audio")
MISSING = "hashbench serve needs FastAPI and uvicorn: pip install 'hashbench[serve]'"


class _TooLarge(Exception):
    """The request body went past the upload limit while it was being read."""


def _fastapi() -> Any:
    try:
        import fastapi
        import multipart  # noqa: F401 - python-multipart, for the upload form
        import uvicorn  # noqa: F401
    except ImportError:
        raise HashbenchError(MISSING) from None
    return fastapi


def create_app(index: "Index | str | os.PathLike", k: int = 10, max_upload_mb: float = 8.0,
               max_pixels: int | None = None) -> Any:
    """The FastAPI app serving ``index`` (an :class:`Index` or the path of an index file):
    ``k`` results per query unless the request asks otherwise (1..MAX_K), uploads of at most
    ``max_upload_mb`` MB and ``max_pixels`` pixels (None: :data:`hashbench.index.MAX_PIXELS`
    at request time). HashbenchError when FastAPI is missing or an argument is out of range."""
    fastapi = _fastapi()
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile

    if not isinstance(index, Index):
        index = Index.load(index)
    if not 1 <= k <= MAX_K:
        raise HashbenchError(f"-k must be between 1 and {MAX_K}, got {k}")
    if not max_upload_mb > 0:
        raise HashbenchError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    max_bytes = int(max_upload_mb * 1_000_000)
    default_k = k
    work = threading.BoundedSemaphore(WORKERS)

    def pixel_limit() -> int:
        from . import index as index_module

        return index_module.MAX_PIXELS if max_pixels is None else max_pixels

    def fail(status: int, detail: str) -> Any:
        return fastapi.HTTPException(status_code=status, detail=detail)

    def check_k(value: Any) -> int:
        if value is None or value == "":
            return default_k
        try:
            value = int(str(value).strip())
        except ValueError:
            raise fail(422, f"k must be an integer between 1 and {MAX_K}, got {str(value)[:20]!r}") from None
        if not 1 <= value <= MAX_K:
            raise fail(422, f"k must be between 1 and {MAX_K}, got {value}")
        return value

    def check_item(pos: int) -> int:
        if not 0 <= pos < len(index):
            raise fail(404, f"no item {pos}: this index holds items 0..{len(index) - 1}")
        return pos

    def result(hits: list[tuple[int, int]], k: int, query: dict[str, Any], label: Any = None) -> dict[str, Any]:
        relevant = None
        if label is not None and hits:
            relevant = index.relevant(label, [i for i, _ in hits])
        return {"query": query, "k": k,
                "results": [{"rank": r + 1, "item": i, "name": index.describe(i), "distance": d,
                             "labels": index.label_names(i), "image": f"/items/{i}/image",
                             "relevant": None if relevant is None else relevant[r]}
                            for r, (i, d) in enumerate(hits)],
                "precision_at_k": None if relevant is None else sum(relevant) / len(relevant)}

    def encode_upload(data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """Packed code and (width, height) of an uploaded image: 413 over the pixel limit, 415 when not an image."""
        from PIL import Image, UnidentifiedImageError

        limit = pixel_limit()
        try:
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
        except Image.DecompressionBombError as exc:
            raise fail(413, f"the upload has too many pixels ({exc})") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise fail(415, f"the upload is not an image this server can read ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:120]})") from None
        if width * height > limit:
            raise fail(413, f"the upload is {width}x{height} pixels, more than the {limit:,} allowed")
        with work:
            try:
                image = read_image(data, index.encoder_manifest, limit)
            except HashbenchError as exc:
                raise fail(415, str(exc)) from None
            return index.encode([image]), (width, height)

    @functools.lru_cache(maxsize=128)
    def item_png(pos: int) -> bytes:
        from PIL import Image

        if index.manifest["source"]["kind"] == "split":
            from .index import split_image

            try:
                array = np.asarray(split_image(index, pos))
            except HashbenchError as exc:
                raise fail(404, f"item {pos}: its image cannot be loaded ({exc})") from None
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            image = Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)))
        else:
            try:
                path = index.file_path(pos)
            except HashbenchError as exc:
                raise fail(404, str(exc)) from None
            try:
                with Image.open(path) as opened:
                    if opened.size[0] * opened.size[1] > pixel_limit():
                        raise fail(413, f"item {pos}: {opened.size[0]}x{opened.size[1]} pixels, over the limit")
                    opened.draft("RGB", (THUMB, THUMB))  # JPEG: decode at a reduced scale
                    image = opened.convert("RGBA" if "A" in opened.getbands() else "RGB")
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise fail(415, f"item {pos}: its file is no longer a readable image ({type(exc).__name__})") from None
        image.thumbnail((THUMB, THUMB))
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=3)
        return buffer.getvalue()

    app = fastapi.FastAPI(title="hashbench serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Any:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ())[1:]) or "request"
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    @app.exception_handler(HashbenchError)
    async def _bad(request: Request, exc: HashbenchError) -> Any:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def page() -> Any:
        return HTMLResponse(_page(index, default_k, max_bytes), headers={"Content-Security-Policy": CSP})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Any:
        return Response(status_code=204)

    @app.get("/api/index")
    def summary() -> Any:
        return _summary(index, default_k, max_bytes, pixel_limit())

    @app.get("/search")
    def search_item(item: int | None = None, k: str | None = None) -> Any:
        if item is None:
            raise fail(422, "give ?item=POSITION (an indexed item), or POST an image as the multipart field 'file'")
        k = check_k(k)
        pos = check_item(item)
        hits = index.search(index.codes[pos:pos + 1], k)[0]
        label = None
        if index.labels is not None:
            value = index.labels[pos]
            label = value if (value >= 0 if value.ndim == 0 else value.any()) else None
        query = {"kind": "item", "item": pos, "name": index.describe(pos), "labels": index.label_names(pos),
                 "image": f"/items/{pos}/image"}
        return result(hits, k, query, label)

    @app.post("/search")
    async def search_upload(request: Request) -> Any:
        kind = request.headers.get("content-type", "")
        if not kind.lower().startswith("multipart/form-data"):
            raise fail(415, "send the image as the multipart/form-data field 'file' (curl -F file=@IMAGE)")
        limit = max_bytes + FORM_OVERHEAD
        length = request.headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise fail(400, "a malformed Content-Length header")
            if int(length) > limit:
                raise fail(413, f"the upload is {int(length) / 1e6:.2f} MB; at most {max_upload_mb:g} MB is accepted")
        seen = 0

        async def receive() -> Any:
            nonlocal seen
            message = await request.receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        counted = Request(request.scope, receive)
        try:
            form = await counted.form(max_files=1, max_fields=4, max_part_size=1024)
        except _TooLarge:
            raise fail(413, f"the upload is larger than {max_upload_mb:g} MB") from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise fail(422, "no image: send it as the multipart/form-data field 'file'")
            k = check_k(form.get("k", request.query_params.get("k")))
            data = await upload.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise fail(413, f"the upload is larger than {max_upload_mb:g} MB")
            if not data:
                raise fail(415, "the upload is empty")
            name = os.path.basename(upload.filename or "upload")[:200]
        finally:
            await form.close()
        code, (width, height) = await run_in_threadpool(encode_upload, data)
        hits = (await run_in_threadpool(index.search, code, k))[0]
        return result(hits, k, {"kind": "upload", "name": name, "width": width, "height": height,
                                "bytes": len(data)})

    @app.get("/items/{pos}/image")
    def item_image(pos: int) -> Any:
        return Response(item_png(check_item(pos)), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=60"})

    app.add_middleware(_SecurityHeaders)
    return app


#: the page loads only from this server (its own inline CSS and JS, its item images, upload previews)
CSP = ("default-src 'none'; img-src 'self' blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class _SecurityHeaders:
    """ASGI middleware: ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy`` on every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-content-type-options", b"nosniff"),
                                      (b"referrer-policy", b"no-referrer")]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def sample_positions(index: Index, count: int = SAMPLES) -> list[int]:
    """Up to ``count`` item positions spread evenly over the index (the page's strip)."""
    if len(index) == 0:
        return []
    return sorted({int(p) for p in np.linspace(0, len(index) - 1, min(count, len(index))).round()})


def _source_text(index: Index) -> str:
    source = index.manifest["source"]
    if source["kind"] == "split":
        return f"{source['dataset']} {source['split']} split"
    return f"folder {Path(source['root']).name}"


def _summary(index: Index, k: int, max_bytes: int, max_pixels: int) -> dict[str, Any]:
    run = index.manifest["run"]
    labels = index.manifest.get("labels")
    return {"count": len(index), "bits": index.bits,
            "run": {key: run.get(key) for key in ("run_id", "method", "label", "bits", "dataset", "map")},
            "source": {"kind": index.manifest["source"]["kind"], "description": _source_text(index)},
            "labels": None if labels is None else {"kind": labels["kind"], "names": labels["names"]},
            "created": index.manifest.get("created"), "k": k, "max_k": MAX_K, "max_upload_bytes": max_bytes,
            "max_pixels": max_pixels, "samples": sample_positions(index)}


def _page(index: Index, k: int, max_bytes: int) -> str:
    """The search page: the run and index in the header, the config for the script inline."""
    run = index.manifest["run"]
    mean_ap = run.get("map")
    facts = [f"{run.get('bits')} bits", "mAP " + (f"{mean_ap:.3f}" if isinstance(mean_ap, (int, float)) else "n/a"),
             f"{len(index):,} items", _source_text(index)]
    if index.labels is not None:
        facts.append(f"{len(index.manifest['labels']['names']):,} labels")
    config = {"k": k, "max_k": MAX_K, "max_upload_bytes": max_bytes, "bits": index.bits,
              "labelled": index.labels is not None,
              "samples": [{"item": p, "name": index.describe(p), "image": f"/items/{p}/image"}
                          for p in sample_positions(index)]}
    return (_PAGE.replace("@@TITLE@@", html.escape(str(run.get("label"))))
            .replace("@@RUN@@", html.escape(f"{run.get('label')} ({run.get('method')}), run {run.get('run_id')}"))
            .replace("@@FACTS@@", html.escape(" · ".join(facts)))
            .replace("@@K@@", str(k)).replace("@@MAXK@@", str(MAX_K))
            .replace("@@CONFIG@@", json.dumps(config).replace("<", "\\u003c")))


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hashbench search: @@TITLE@@</title>
<style>
:root { --fg: #1d2330; --muted: #667085; --line: #d9dee7; --bg: #f6f7f9; --accent: #2f5bd3; --good: #1a7f45; --bad: #b42318; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { padding: 14px 24px; background: #fff; border-bottom: 1px solid var(--line); }
header h1 { margin: 0; font-size: 18px; }
header .run { color: var(--fg); margin-top: 2px; }
header .facts { color: var(--muted); }
main { padding: 16px 24px 32px; max-width: 1400px; }
.controls { display: flex; flex-wrap: wrap; gap: 16px; align-items: center; }
.upload { display: inline-flex; gap: 8px; align-items: center; padding: 8px 12px; background: #fff; border: 1px dashed var(--accent); border-radius: 8px; }
.upload.drag { background: #eef3ff; }
input[type=number] { width: 64px; }
.hint { color: var(--muted); margin: 14px 0 6px; }
.strip { display: flex; gap: 8px; overflow-x: auto; padding-bottom: 6px; }
.sample { flex: 0 0 auto; width: 76px; padding: 3px; border: 1px solid var(--line); border-radius: 6px; background: #fff; cursor: pointer; }
.sample:hover, .sample:focus { border-color: var(--accent); outline: none; }
.sample img { width: 68px; height: 68px; object-fit: cover; display: block; }
img.pixel { image-rendering: pixelated; }
#error { margin: 12px 0; padding: 8px 12px; border-radius: 6px; background: #fef3f2; color: var(--bad); border: 1px solid #fecdca; }
#query { display: flex; gap: 16px; align-items: center; margin: 16px 0; padding: 12px; background: #fff; border: 1px solid var(--line); border-radius: 8px; }
#query img { width: 128px; height: 128px; object-fit: contain; background: #eef0f3; border-radius: 4px; }
#query .name { font-weight: 600; word-break: break-all; }
.badge { display: inline-block; margin-top: 6px; padding: 2px 10px; border-radius: 999px; background: #ecfdf3; color: var(--good); border: 1px solid #abefc6; font-weight: 600; }
.note { color: var(--muted); font-size: 12px; }
#status { color: var(--muted); min-height: 20px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
.card.relevant { border-color: var(--good); box-shadow: inset 0 0 0 1px var(--good); }
.card.irrelevant { border-color: #fda29b; }
.card img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #eef0f3; border-radius: 4px; display: block; }
.card .top { display: flex; justify-content: space-between; margin-top: 6px; font-weight: 600; }
.card .distance { color: var(--accent); }
.card .name { color: var(--fg); font-size: 12px; word-break: break-all; }
.chips { display: flex; flex-wrap: wrap; gap: 4px; margin-top: 4px; }
.chip { font-size: 11px; padding: 0 6px; border-radius: 999px; background: #f2f4f7; border: 1px solid var(--line); }
footer { margin-top: 24px; color: var(--muted); font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>hashbench search</h1>
  <div class="run">@@RUN@@</div>
  <div class="facts">@@FACTS@@</div>
</header>
<main>
  <div class="controls">
    <label class="upload" id="drop">Query image: <input type="file" id="file" name="file" accept="image/*"></label>
    <label>results k <input type="number" id="k" min="1" max="@@MAXK@@" value="@@K@@"></label>
  </div>
  <div class="hint">…or pick an indexed item as the query:</div>
  <div class="strip" id="samples"></div>
  <div id="error" role="alert" hidden></div>
  <section id="query" hidden>
    <img id="query-image" alt="the query">
    <div>
      <div class="name" id="query-name"></div>
      <div class="chips" id="query-labels"></div>
      <div><span class="badge" id="precision" hidden></span></div>
      <div class="note" id="precision-note" hidden>precision@k: the fraction of the k results that share a label with
        the query. A picked item is itself in the index, so it is among its own results (distance 0).</div>
    </div>
  </section>
  <div id="status" aria-live="polite"></div>
  <section class="grid" id="results"></section>
  <footer>Results are ranked by the Hamming distance between binary codes (ties in index order). Uploads stay on this
    server for the search only; nothing is stored.</footer>
</main>
<script type="application/json" id="config">@@CONFIG@@</script>
<script>
"use strict";
const config = JSON.parse(document.getElementById("config").textContent);
const $ = (id) => document.getElementById(id);
let preview = null;

function element(tag, props, children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children || []) node.append(child);
  return node;
}
function pixelated(img) {
  img.addEventListener("load", () => { if (img.naturalWidth < 64) img.classList.add("pixel"); });
  return img;
}
function chips(labels, target) {
  target.replaceChildren(...labels.map((name) => element("span", {className: "chip", textContent: name})));
  return target;
}
function wantedK() {
  const k = parseInt($("k").value, 10);
  return Number.isInteger(k) ? k : config.k;
}
function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}
function showQuery(src, name, labels) {
  if (preview && preview !== src) URL.revokeObjectURL(preview);
  $("query").hidden = false;
  $("query-image").src = src;
  $("query-name").textContent = name;
  chips(labels || [], $("query-labels"));
  $("precision").hidden = true;
  $("precision-note").hidden = true;
}
function render(data) {
  const cards = data.results.map((r) => {
    const img = pixelated(element("img", {src: r.image, alt: r.name, loading: "lazy"}));
    const card = element("div", {className: "card"}, [
      img,
      element("div", {className: "top"}, [
        element("span", {className: "rank", textContent: "#" + r.rank}),
        element("span", {className: "distance", textContent: "d = " + r.distance, title: "Hamming distance (of " + config.bits + " bits)"}),
      ]),
      element("div", {className: "name", textContent: r.name}),
      chips(r.labels, element("div", {className: "chips"})),
    ]);
    card.dataset.rank = r.rank;
    card.dataset.distance = r.distance;
    card.dataset.item = r.item;
    if (r.relevant !== null) card.classList.add(r.relevant ? "relevant" : "irrelevant");
    return card;
  });
  $("results").replaceChildren(...cards);
  if (data.query.kind === "item") {
    $("query-name").textContent = data.query.name + " (item " + data.query.item + ")";
    chips(data.query.labels, $("query-labels"));
  }
  if (data.precision_at_k !== null) {
    const hits = data.results.filter((r) => r.relevant).length;
    $("precision").textContent = "precision@" + data.results.length + " = " + data.precision_at_k.toFixed(2) +
      " (" + hits + "/" + data.results.length + ")";
    $("precision").hidden = false;
    $("precision-note").hidden = false;
  }
  $("status").textContent = data.results.length + " results";
}
async function search(request) {
  showError("");
  $("status").textContent = "searching…";
  try {
    const response = await fetch(request.url, request.init);
    const data = await response.json().catch(() => ({detail: response.statusText}));
    if (!response.ok) throw new Error(response.status + ": " + (data.detail || "request failed"));
    render(data);
  } catch (err) {
    $("results").replaceChildren();
    $("status").textContent = "";
    showError(String(err.message || err));
  }
}
function upload(file) {
  if (!file) return;
  if (file.size > config.max_upload_bytes) {
    showError("413: the file is " + (file.size / 1e6).toFixed(2) + " MB; at most " + (config.max_upload_bytes / 1e6) + " MB is accepted");
    return;
  }
  preview = URL.createObjectURL(file);
  showQuery(preview, file.name + " (upload)", []);
  const body = new FormData();
  body.append("file", file);
  body.append("k", String(wantedK()));
  search({url: "/search", init: {method: "POST", body}});
}
function pick(item) {
  const sample = config.samples.find((s) => s.item === item);
  showQuery("/items/" + item + "/image", sample ? sample.name : "item " + item, []);
  search({url: "/search?item=" + item + "&k=" + wantedK(), init: {}});
}
for (const s of config.samples) {
  const img = pixelated(element("img", {src: s.image, alt: s.name}));
  const button = element("button", {className: "sample", title: s.name, type: "button"}, [img]);
  button.dataset.item = s.item;
  button.addEventListener("click", () => pick(s.item));
  $("samples").append(button);
}
$("file").addEventListener("change", (e) => upload(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("drag"); });
drop.addEventListener("dragleave", () => drop.classList.remove("drag"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("drag"); upload(e.dataTransfer.files[0]); });
</script>
</body>
</html>
"""


# ----------------------------------------------------------------------------- running it

def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); HashbenchError when it cannot bind."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise HashbenchError(f"cannot listen on {host}:{port} ({exc})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise HashbenchError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(index_path: "str | os.PathLike", host: str = "127.0.0.1", port: int = 8000, k: int = 10,
          max_upload_mb: float = 8.0) -> int:
    """Serve the index file at ``index_path`` on http://host:port until interrupted (0)."""
    _fastapi()
    import uvicorn

    index = Index.load(index_path)
    app = create_app(index, k=k, max_upload_mb=max_upload_mb)
    sock = _listen(host, port)
    print(f"hashbench: serving {index_path} ({len(index):,} items) on {_url(sock)}", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", server_header=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


@contextlib.contextmanager
def background_server(app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 20.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread of this process; yields its base URL (port 0: a
    free port), and stops it on exit."""
    _fastapi()
    import time

    import uvicorn

    sock = _listen(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="hashbench-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise HashbenchError(f"the server did not start within {timeout:.0f} s")
            time.sleep(0.02)
        yield _url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def launch_chromium(playwright: Any, **options: Any) -> Any:
    """Headless Chromium for Playwright (``playwright.chromium.launch``) from the system's
    executable (:func:`hashbench.report.find_chromium`: HASHBENCH_CHROMIUM or chromium on PATH),
    with :data:`BROWSER_ARGS`; no browser download is used. HashbenchError when none is found."""
    from .report import find_chromium

    exe = find_chromium()
    if exe is None:
        raise HashbenchError("no Chromium found (apt-get install -y chromium, or set HASHBENCH_CHROMIUM)")
    return playwright.chromium.launch(executable_path=exe, headless=True, args=list(BROWSER_ARGS), **options)


__all__ = ("create_app", "serve", "background_server", "launch_chromium", "sample_positions",
           "MAX_K", "BROWSER_ARGS")

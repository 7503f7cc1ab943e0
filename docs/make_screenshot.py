"""A screenshot of the ``hashbench serve`` page after one query (docs/serving.md's picture).

    python docs/make_screenshot.py INDEX QUERY_IMAGE OUT.png [--k 10] [--pick]

Starts the server on a free port of 127.0.0.1 (in this process), opens the page in headless
Chromium through Playwright (the system's Chromium: HASHBENCH_CHROMIUM or ``chromium`` on PATH;
nothing is downloaded), uploads QUERY_IMAGE through the page's file input, waits until the k
result cards and their images have loaded, and saves a full-page PNG. ``--pick N``: instead of
uploading, click the N-th sample of the page's strip (an indexed item: shows precision@k).
Needs ``hashbench[serve]`` and ``playwright``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hashbench.errors import HashbenchError
from hashbench.index import Index
from hashbench.serve import background_server, create_app, launch_chromium

TIMEOUT_MS = 60_000


def screenshot(index_path: str, query: str | None, out: str, k: int = 10, pick: int | None = None,
               width: int = 1280) -> Path:
    """Save the page after one query to ``out``; returns its path."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise HashbenchError("the screenshot needs playwright: pip install playwright") from None
    index = Index.load(index_path)
    shown = min(k, len(index))
    with background_server(create_app(index, k=k)) as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900}, device_scale_factor=1)
            page.goto(url)
            if pick is None:
                page.set_input_files("#file", str(query))
            else:
                page.wait_for_selector(f"#samples button >> nth={pick}").click()
            page.wait_for_function(f"() => document.querySelectorAll('#results .card').length === {shown}",
                                   timeout=TIMEOUT_MS)
            page.wait_for_function("() => [...document.images].filter(i => i.src)"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=TIMEOUT_MS)
            if not page.is_hidden("#error"):
                raise HashbenchError(f"the page shows an error: {page.inner_text('#error')}")
            out_path = Path(out)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out_path), full_page=True)
        finally:
            browser.close()
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", metavar="INDEX", help="an index file (hashbench index)")
    parser.add_argument("query", metavar="QUERY_IMAGE", help="the image to upload as the query")
    parser.add_argument("out", metavar="OUT.png")
    parser.add_argument("--k", type=int, default=10, help="results shown (default 10)")
    parser.add_argument("--pick", type=int, default=None, metavar="N",
                        help="click the N-th sample (0-based) instead of uploading QUERY_IMAGE")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels (default 1280)")
    args = parser.parse_args(argv)
    try:
        if args.pick is None and not Path(args.query).is_file():
            raise HashbenchError(f"{args.query}: no such file")
        path = screenshot(args.index, args.query, args.out, k=args.k, pick=args.pick, width=args.width)
    except HashbenchError as exc:
        print(f"hashbench: {exc}", file=sys.stderr)
        return 2
    print(f"hashbench: wrote {path} ({path.stat().st_size:,} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

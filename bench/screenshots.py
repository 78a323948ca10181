"""What bench/screenshots.sh needs besides the shell: a free loopback port, waiting for a
TensorBoard server to serve a run's custom-scalars layout, and shrinking a screenshot.

    python bench/screenshots.py port
    python bench/screenshots.py wait http://127.0.0.1:PORT [SECONDS]
    python bench/screenshots.py shrink FILE.png

``wait`` polls ``/data/plugin/custom_scalars/layout`` until it names at least one category and
every tag of the first category's charts is served, so the screenshot is taken of a dashboard
whose data is loaded; the limit is a safety net for a hung server, not a timing.
``shrink`` keeps the picture and drops its size: TensorBoard's flat colours fit a 64-colour
palette (a 1280x1000 dashboard: ~40-90 KB instead of ~150 KB).
"""
from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def ready(base: str) -> bool:
    """Whether the server serves a layout and the first category's every series has points."""
    layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
    if not layout.get("category"):
        return False
    for chart in layout["category"][0]["chart"]:
        for regex in chart["multiline"]["tag"]:
            query = urllib.parse.urlencode({"run": ".", "tag": regex})
            if not get_json(f"{base}/data/plugin/custom_scalars/scalars?{query}").get("tag_to_events"):
                return False
    return True


def wait(base: str, limit: float = 600.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            if ready(base):
                return
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"screenshots.py: {base} served no complete custom-scalars layout within {limit:.0f} s")
        time.sleep(0.5)


def shrink(path: str) -> None:
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main(argv: list) -> None:
    if argv[:1] == ["port"]:
        print(free_port())
    elif argv[:1] == ["wait"] and len(argv) in (2, 3):
        wait(argv[1], float(argv[2]) if len(argv) == 3 else 600.0)
    elif argv[:1] == ["shrink"] and len(argv) == 2:
        shrink(argv[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

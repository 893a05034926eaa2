"""Headless Chromium for tests: draw an HTML file as a browser does and read back its text.

``screenshot(html_path, png_path) -> text`` writes the PNG of the window and returns the page's
text as the browser parsed it. Without Chromium the calling test is skipped, except under CI
(``CI=true``), where a missing browser is a failure. The browser may not resolve any host name,
so a page that fetches something shows it broken in the picture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing from the network
)
TIMEOUT = 120  # seconds per browser run


def find_chromium() -> str | None:
    return next((path for name in NAMES if (path := shutil.which(name))), None)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_chromium() -> str:
    """The browser's path; skip the test without one, fail it under CI."""
    path = find_chromium()
    if path is not None:
        return path
    reason = "headless Chromium is not installed (Debian: apt-get install chromium)"
    if in_ci():
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(f"{reason}; the real-browser check runs only where it is")


def screenshot(
    html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 1400
) -> str:
    """Draw ``html_path`` in a ``width`` x ``height`` window into ``png_path``; return the
    text of the page the browser built (``--dump-dom``), whitespace collapsed, each text node
    separated by a space."""
    browser = require_chromium()
    url = Path(html_path).resolve().as_uri()
    png_path = Path(png_path).resolve()
    png_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        common = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        _run([*common, f"--screenshot={png_path}", url])
        dom = _run([*common, "--dump-dom", url])
    if not png_path.is_file() or png_path.stat().st_size == 0:
        raise AssertionError(f"Chromium wrote no screenshot of {url}")
    return page_text(dom)


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    if done.returncode != 0:
        raise AssertionError(f"Chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


class _Text(HTMLParser):
    SKIPPED = ("head", "script", "style")

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        self.skipping += tag in self.SKIPPED

    def handle_endtag(self, tag):
        self.skipping -= tag in self.SKIPPED

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def page_text(dom: str) -> str:
    """The text nodes of an HTML document outside its head, joined by spaces."""
    parser = _Text()
    parser.feed(dom)
    return " ".join(" ".join(parser.parts).split())


def pixels(png_path: str | Path) -> np.ndarray:
    """``[height, width, 3]`` RGB values 0-255 of a PNG."""
    values = image.imread(str(png_path))
    values = values * 255 if values.dtype.kind == "f" else values
    return np.asarray(values[..., :3], dtype=float).round()


def distinct_colours(png_path: str | Path) -> int:
    rgb = pixels(png_path).astype(np.int64)
    return len(np.unique(rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]))


def colour_area(png_path: str | Path, colour: str, tolerance: int = 16) -> int:
    """How many pixels are within ``tolerance`` (per channel) of ``colour`` (``"#1f77b4"``)."""
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)
    return int((np.abs(pixels(png_path) - target) <= tolerance).all(-1).sum())

"""scripts/screenshot_report.py: a report rendered by headless Chromium to a legible PNG."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "screenshot_report.py"
HAS_CHROMIUM = any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))


def _png_b64() -> str:
    """A 60 x 40 image, red above blue, as base64, so the page holds an inline image as
    report.html does."""
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:20, :, 0] = 255
    pixels[20:, :, 2] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _page(tmp_path: Path) -> Path:
    rows = "".join(f"<tr><td>row {i}</td><td>{i * 0.25:.2f}</td></tr>" for i in range(4))
    page = tmp_path / "report.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><style>"
        "body{font-family:sans-serif;margin:2em}td{border:1px solid #ccc;padding:3px 8px}"
        "table{border-collapse:collapse}</style></head><body>"
        "<h1>tiny report</h1><h2>Verdict</h2><p>No edge.</p>"
        f"<h2>Table</h2><table>{rows}</table>"
        f"<h2>Plots</h2><img alt='red over blue' src='data:image/png;base64,{_png_b64()}'/>"
        "</body></html>"
    )
    return page


def _run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _has(pixels: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    """Whether some pixel is within 16 of `rgb` in every channel (the PNG is palette-reduced)."""
    return bool((np.abs(pixels.reshape(-1, 3).astype(int) - rgb) <= 16).all(axis=1).any())


@pytest.mark.skipif(not HAS_CHROMIUM, reason="no chromium on the PATH")
def test_screenshot_whole_page_and_first_screen(tmp_path):
    page = _page(tmp_path)
    out = tmp_path / "shots" / "report.png"
    run = _run(page, "--out", out, "--width", "640")
    assert run.returncode == 0, run.stderr
    pixels = _pixels(out)
    height, width, _ = pixels.shape
    assert width == 640
    # the whole page, cropped: taller than the headings, far shorter than the 8192-pixel window
    assert 150 < height < 1000
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2  # not a uniform colour
    # the inline image rendered: red and blue pixels are on the page
    assert _has(pixels, (255, 0, 0)) and _has(pixels, (0, 0, 255))

    # --first-screen stops above the plots: text and table, no image
    top = tmp_path / "top.png"
    run = _run(page, "--out", top, "--width", "640", "--first-screen")
    assert run.returncode == 0, run.stderr
    first = _pixels(top)
    assert first.shape[1] == 640 and 50 < first.shape[0] < height
    assert not _has(first, (255, 0, 0))
    assert not list(tmp_path.glob("shots/.*"))  # no temporary file left beside the output


def test_missing_report_is_one_line_exit_2(tmp_path):
    out = tmp_path / "report.png"
    run = _run(tmp_path / "nope" / "report.html", "--out", out)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such report" in lines[0], run.stderr
    assert "Traceback" not in run.stderr
    assert not out.exists()


def test_no_chromium_is_one_line_exit_2(tmp_path):
    """With nothing on the PATH the script names the browsers it looked for."""
    page = _page(tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    run = _run(page, "--out", tmp_path / "report.png", env={"PATH": str(empty)})
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Chromium found" in lines[0], run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.skipif(not HAS_CHROMIUM, reason="no chromium on the PATH")
def test_a_backtest_report_renders_every_section(tmp_path):
    """A real report.html (tiny backtest on two synthetic tickers), rendered whole: its
    sections and five plots make a long page, and the plots' colours are on it."""
    from tests.conftest import ohlcv_from_returns, random_walk_returns, tiny_config
    from tsconv.recipes.backtest import run_backtest
    from tsconv.recipes.prepare import prepare

    frames = {t: ohlcv_from_returns(random_walk_returns(700, seed=i)) for i, t in enumerate("AB")}
    cfg = tiny_config(backtest={"train_span": 400, "test_span": 150})
    run_backtest(cfg, tmp_path / "bt", prep=prepare(cfg, frames))
    html = (tmp_path / "bt" / "report.html").read_text()
    for anchor in ["verdict", "costs", "equity", "quantiles", "per-ticker", "per-fold"]:
        assert f"<section id='{anchor}'>" in html, anchor
    out = tmp_path / "report.png"
    run = _run(tmp_path / "bt" / "report.html", "--out", out)
    assert run.returncode == 0, run.stderr
    pixels = _pixels(out)
    assert pixels.shape[1] == 1000 and pixels.shape[0] > 4000, pixels.shape
    assert _has(pixels, (31, 119, 180))  # matplotlib's first colour: the plots rendered

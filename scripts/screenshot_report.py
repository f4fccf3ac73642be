"""Render a backtest's report.html to a PNG with headless Chromium.

    python scripts/screenshot_report.py runs/quick-bt/report.html --out docs/report.png
        [--width 1000] [--height N] [--first-screen] [--timeout 60]

The whole page by default: Chromium's --screenshot captures the window, not the page, so the
window is made taller than the page (doubling from 8192 pixels until a blank strip is left at
the bottom) and the trailing blank rows are cropped. `--first-screen` captures only the part
of the report above its first plot (title, verdict, tests and results tables), at most
`--height` pixels (1400 by default), cut at a blank strip so no table is sliced: that is the
README's image (`make screenshot`). Needs chromium, chromium-browser or google-chrome on the
PATH; exit 2 with one line on stderr when it or the report is missing, 1 when Chromium fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Flags for a quiet, throwaway browser: no network beyond the file, no profile left behind.
FLAGS = [
    "--headless",
    "--no-sandbox",  # containers and CI run as root, where the sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]
FULL_START, FULL_MAX = 8192, 32768
FIRST_SCREEN_HEIGHT = 1400
MIN_BLANK = 16  # rows: the body's bottom margin is 2em (32 px), a gap between blocks ~20 px


class UserError(Exception):
    """One line for stderr; exit 2."""


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise UserError(f"no Chromium found on the PATH (looked for {', '.join(BROWSERS)})")


def shoot(browser: str, page: Path, width: int, height: int, timeout: float) -> np.ndarray:
    """The top width x height pixels of `page` as an RGB array."""
    with tempfile.TemporaryDirectory(prefix="tsconv-shot-") as tmp:
        png = Path(tmp) / "shot.png"
        cmd = [
            browser,
            *FLAGS,
            f"--user-data-dir={Path(tmp) / 'profile'}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            page.resolve().as_uri(),
        ]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{browser} took longer than {timeout:g} s") from None
        if run.returncode != 0 or not png.exists():
            # Chromium logs dbus and GPU complaints on every run; the last line is the useful one.
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{browser} exited {run.returncode} without a screenshot: {last}")
        with Image.open(png) as im:
            return np.asarray(im.convert("RGB"))


def blank_rows(pixels: np.ndarray) -> np.ndarray:
    """Per row: True where every pixel has the page's background (the bottom-right pixel)."""
    return (pixels == pixels[-1, -1]).all(axis=(1, 2))


def content_end(blank: np.ndarray) -> int:
    """Rows up to and including the last non-blank one."""
    filled = np.flatnonzero(~blank)
    return int(filled[-1]) + 1 if filled.size else 0


def cut_at_gap(blank: np.ndarray, limit: int) -> int:
    """Where to cut so that at most `limit` rows remain and no block is sliced: the start of
    the last strip of MIN_BLANK blank rows that begins before `limit` (`limit` if none)."""
    run = 0
    cut = limit
    for i, b in enumerate(blank[:limit]):
        run = run + 1 if b else 0
        if run == MIN_BLANK:
            cut = i - MIN_BLANK + 1
    return cut


def above_first_plot(html: str) -> str:
    """The report cut before the heading of the section that holds its first image."""
    img = html.find("<img")
    if img < 0:
        return html
    heading = html.rfind("<h2", 0, img)
    return html[: heading if heading > 0 else img] + "\n</body></html>\n"


def render(report: Path, width: int, height: int, first_screen: bool, timeout: float) -> np.ndarray:
    browser = find_browser()
    if first_screen:
        limit = height or FIRST_SCREEN_HEIGHT
        with tempfile.TemporaryDirectory(prefix="tsconv-page-") as tmp:
            # The report is self-contained (images inline), so a copy renders the same anywhere.
            page = Path(tmp) / "report.html"
            page.write_text(above_first_plot(report.read_text(encoding="utf-8")), "utf-8")
            pixels = shoot(browser, page, width, limit + 2 * MIN_BLANK, timeout)
        blank = blank_rows(pixels)
        end = content_end(blank)
        if end <= limit:
            return pixels[: end + MIN_BLANK]
        end = content_end(blank[: cut_at_gap(blank, limit)])
        return pixels[: min(end + MIN_BLANK, limit)]
    if height:
        return shoot(browser, report, width, height, timeout)
    tall = FULL_START
    while True:
        pixels = shoot(browser, report, width, tall, timeout)
        blank = blank_rows(pixels)
        end = content_end(blank)
        if tall - end >= MIN_BLANK:  # a blank strip at the bottom: the page ended in the window
            return pixels[: end + MIN_BLANK]
        if tall >= FULL_MAX:
            print(f"note: the page is taller than {FULL_MAX} pixels; cut there", file=sys.stderr)
            return pixels
        tall *= 2


def write_png(pixels: np.ndarray, out: Path) -> None:
    """Written next to `out` and renamed, so a failure never leaves half a PNG (as tsconv
    writes its own outputs)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        # A 256-colour palette: text, tables and line plots lose nothing visible and the file
        # is much smaller, which matters for an image kept in git.
        image = Image.fromarray(pixels).quantize(
            256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
        image.save(tmp, optimize=True)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("report", type=Path, help="a report.html written by tsconv backtest")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--width", type=int, default=1000, help="window width in pixels")
    p.add_argument(
        "--height",
        type=int,
        default=0,
        help="window height in pixels (0: the whole page; with --first-screen the most kept, "
        f"default {FIRST_SCREEN_HEIGHT})",
    )
    p.add_argument(
        "--first-screen",
        action="store_true",
        help="only the top of the report, above its first plot",
    )
    p.add_argument("--timeout", type=float, default=60, help="seconds per Chromium run")
    args = p.parse_args(argv)
    name = "screenshot_report.py"
    try:
        if not args.report.is_file():
            raise UserError(f"no such report: {args.report}")
        if args.width < 100 or args.height < 0:
            raise UserError("--width must be at least 100 and --height at least 0")
        if args.out.suffix.lower() != ".png":
            raise UserError(f"--out must name a .png file: {args.out}")
        pixels = render(args.report, args.width, args.height, args.first_screen, args.timeout)
        write_png(pixels, args.out)
    except UserError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {pixels.shape[1]} x {pixels.shape[0]} pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())

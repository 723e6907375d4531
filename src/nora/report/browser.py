"""The HTML report as a person sees it: rendered by headless Chromium into a PNG.

A report is only trustworthy if it renders; the screenshot, kept beside ``report.html``, shows the
embedded plots and tables as a browser draws them and can be shared where HTML cannot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from nora.errors import NoraError
from nora.io import atomic_write_bytes

#: Browser executables tried in order (Debian's package installs ``chromium``).
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """The Chromium to use: ``$NORA_CHROMIUM`` if set, else the first of ``BROWSERS`` on the PATH."""
    chosen = os.environ.get("NORA_CHROMIUM")
    if chosen:
        return chosen if shutil.which(chosen) else None
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def _run(browser: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    # --no-sandbox: Chromium refuses to start as root (containers, CI) without it
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
               "--no-first-run", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise NoraError(f"{browser} did not finish rendering within {timeout:g} s") from None
    except OSError as exc:
        raise NoraError(f"cannot start {browser}: {exc}") from None


def _browser() -> str:
    browser = find_browser()
    if browser is None:
        raise NoraError("no Chromium found to render the report: install Debian's chromium package "
                        "(apt-get install chromium) or set NORA_CHROMIUM to a Chrome/Chromium executable")
    return browser


def screenshot(html_file: str | Path, png_file: str | Path | None = None, *, width: int = 1200,
               height: int = 8000, timeout: float = 120.0) -> Path:
    """Render ``html_file`` in headless Chromium and save what it shows as PNG (default: beside it,
    same stem), written atomically so a killed render leaves no half image.

    The page is drawn into a ``height`` pixel tall window and the blank space below it cut off."""
    png_file = Path(png_file) if png_file is not None else Path(html_file).with_suffix(".png")
    html_file = Path(html_file).resolve()
    if not html_file.is_file():
        raise NoraError(f"no HTML file at {html_file}")
    with tempfile.TemporaryDirectory() as scratch:
        shot = Path(scratch) / "screenshot.png"
        done = _run(_browser(), [f"--window-size={width},{height}", f"--screenshot={shot}", html_file.as_uri()],
                    timeout)
        if not shot.is_file() or shot.stat().st_size == 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise NoraError(f"Chromium wrote no screenshot of {html_file} (exit {done.returncode}: {last})")
        _crop_blank_bottom(shot)
        return atomic_write_bytes(png_file, shot.read_bytes())


def _crop_blank_bottom(png: Path, margin: int = 24) -> None:
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    drawn = (pixels[..., :3] < 0.98).any(axis=(1, 2)).nonzero()[0]
    bottom = min(len(pixels), (int(drawn[-1]) + margin) if len(drawn) else margin)
    matplotlib.image.imsave(png, pixels[:bottom])


def rendered_dom(html_file: str | Path, *, timeout: float = 120.0) -> str:
    """The document as Chromium parsed it (``--dump-dom``): what a reader's browser builds."""
    html_file = Path(html_file).resolve()
    done = _run(_browser(), ["--dump-dom", html_file.as_uri()], timeout)
    if done.returncode != 0 or "<html" not in done.stdout:
        raise NoraError(f"Chromium could not render {html_file} (exit {done.returncode})")
    return done.stdout

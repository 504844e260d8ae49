"""What the browser tests share: Debian's chromium, a notebook file, and page helpers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("GPUQUEUE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Screenshots go to docs/images only when asked (GPUQUEUE_SCREENSHOTS=1, to refresh the docs);
# otherwise to a scratch folder, so that a test run leaves the checkout clean.
IMAGES = (Path(__file__).resolve().parents[2] / "docs" / "images" if os.environ.get("GPUQUEUE_SCREENSHOTS") == "1"
          else Path(tempfile.gettempdir()) / "gpuqueue-screenshots")
IMAGES.mkdir(parents=True, exist_ok=True)

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason=f"{CHROMIUM} is not installed (apt-get install chromium)")


def notebook(cells: list[str]) -> dict[str, Any]:
    """An nbformat 4.5 notebook of code cells (ids ``cell-0``, ``cell-1``, ...)."""
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell-{i}", "metadata": {},
                   "outputs": [], "source": src} for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def dismiss_news(page: Any, timeout_ms: int = 5_000) -> None:
    """Answer JupyterLab's "get notified about news?" toast so it covers no screenshot."""
    try:
        page.get_by_role("button", name="No", exact=True).click(timeout=timeout_ms)
    except Exception:  # noqa: BLE001 - not shown in this version
        pass


def lab_has_extension() -> bool:
    """Whether the built sidebar is on the labextensions path (``pip install .`` builds it;
    a worktree's own build can be put first with JUPYTER_PATH)."""
    from jupyter_core.paths import jupyter_path

    return any((Path(d) / "jupyter-gpuqueue" / "package.json").exists() for d in jupyter_path("labextensions"))


def click_widget_cancel(widget: Any, timeout_ms: int = 20_000) -> None:
    """Cancel a job from its cell widget: Cancel, then "Confirm cancel"."""
    widget.locator("button", has_text="Cancel").first.click(timeout=timeout_ms)
    widget.locator("button", has_text="Confirm cancel").click(timeout=timeout_ms)


def stays_put(locator: Any, seconds: float, every_s: float = 0.1) -> list[dict[str, float]]:
    """The distinct boxes ``locator`` had over ``seconds`` (one: it did not move)."""
    import time

    boxes: list[dict[str, float]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        box = locator.bounding_box()
        if box is not None and box not in boxes:
            boxes.append(box)
        time.sleep(every_s)
    return boxes


def wrapped_pieces(page: Any, root_selector: str) -> list[str]:
    """Texts of the ``.jp-GPUQueue-nowrap`` pieces under ``root_selector`` that are broken over
    lines (an inline box split over lines has several client rects)."""
    return page.evaluate(
        """(sel) => [...document.querySelectorAll(sel + ' .jp-GPUQueue-nowrap')]
             .filter(e => e.getClientRects().length > 1).map(e => e.textContent)""",
        root_selector,
    )


def contrast(page: Any, selector: str) -> float:
    """WCAG contrast ratio of an element's text colour against its panel's background."""
    return page.evaluate(
        """(sel) => {
          const el = document.querySelector(sel);
          const rgb = s => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
          const lum = c => { const [r, g, b] = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 :
                              Math.pow((v + 0.055) / 1.055, 2.4); }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
          let bg = el; while (bg && getComputedStyle(bg).backgroundColor.match(/rgba\\(.*, 0\\)$|transparent/)) bg = bg.parentElement;
          const a = lum(rgb(getComputedStyle(el).color)), b = lum(rgb(getComputedStyle(bg).backgroundColor));
          return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        }""",
        selector,
    )


def screenshot_content(page: Any, selector: str, path: Any) -> None:
    """A screenshot of a panel down to the end of its content (not its empty rest)."""
    box = page.evaluate(
        """(sel) => { const el = document.querySelector(sel); const r = el.getBoundingClientRect();
             const bottom = Math.max(...[...el.querySelectorAll('*')].map(c => c.getBoundingClientRect().bottom));
             return {x: r.x, y: r.y, width: r.width, height: Math.min(r.height, bottom - r.y + 8)}; }""",
        selector,
    )
    page.screenshot(path=str(path), clip=box)

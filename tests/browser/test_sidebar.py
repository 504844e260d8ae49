"""A real JupyterLab in Debian's chromium: the "GPU Queue" sidebar and the cell widget.

Runs a ``%%train`` cell of a notebook, follows the job in the sidebar from running to
succeeded, cancels a queued job from the sidebar (with its confirmation dialog), saves the
screenshots the README shows, and counts the sidebar's requests while idle.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the built lab extension
(``pip install .``, or ``jlpm --cwd labextension build`` + ``jupyter labextension develop .``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from helpers.servers import wait_until

CHROMIUM = os.environ.get("GPUQUEUE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
IDLE_SECONDS = float(os.environ.get("GPUQUEUE_IDLE_SECONDS", "15"))  # docs: 30

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"),
]

TRAIN_CELL = """%%train --gpus 1 --name demo-train
import time
import gpuqueue
for step in range(80):
    loss = 2.0 * 0.93 ** step + 0.05
    print(f"step {step}: loss {loss:.3f}", flush=True)
    gpuqueue.log(step=step, loss=loss)
    gpuqueue.progress(step + 1, 80)
    time.sleep(0.25)
model_loss = loss
"""


def notebook(cells: list[str]) -> dict:
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell-{i}", "metadata": {},
                   "outputs": [], "source": src} for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def dismiss_news(page, timeout_ms: int = 5_000) -> None:
    """Answer JupyterLab's "get notified about news?" toast so it covers no screenshot."""
    try:
        page.get_by_role("button", name="No", exact=True).click(timeout=timeout_ms)
    except Exception:  # noqa: BLE001 - not shown in this version
        pass


def lab_has_extension() -> bool:
    from jupyter_core.paths import jupyter_path

    return any((Path(d) / "jupyter-gpuqueue" / "package.json").exists() for d in jupyter_path("labextensions"))


def test_sidebar_and_cell_widget_in_jupyterlab(jupyter_server_factory):
    if not lab_has_extension():
        pytest.skip("the lab extension is not built/installed (pip install . builds it)")
    from playwright.sync_api import sync_playwright

    server = jupyter_server_factory(gpus=1, args=["--LabApp.expose_app_in_browser=True"])
    (server.work_dir / "demo.ipynb").write_text(
        json.dumps(notebook(["%load_ext jupyter_gpuqueue", TRAIN_CELL]))
    )
    client = server.client()
    IMAGES.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{server.url}lab/tree/demo.ipynb?token={server.token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            dismiss_news(page)
            # the "GPU Queue" tab in the left panel
            tab = page.locator('.jp-SideBar [data-id="gpuqueue-sidebar"]')
            assert tab.get_attribute("title") == "GPU Queue"
            tab.click()
            sidebar = page.locator("#gpuqueue-sidebar")
            sidebar.locator("text=no active jobs").wait_for(timeout=20_000)
            assert "1 free" in sidebar.locator(".jp-GPUQueue-pools").inner_text()

            # wait for the kernel, then run the notebook
            page.wait_for_function(
                "() => window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status === 'idle'",
                timeout=60_000,
            )
            # (not awaited: the command's promise resolves only when the cells have run)
            page.evaluate("() => { void window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            running = sidebar.locator('.jp-GPUQueue-job[data-state="running"]', has_text="demo-train")
            running.wait_for(timeout=60_000)

            # another job waits for the only GPU: it shows in the queue, then we cancel it
            queued = client.submit({"kind": "command", "command": [sys.executable, "-c", "pass"],
                                    "gpus": 1, "name": "waiting-job"})
            row = sidebar.locator(f'.jp-GPUQueue-job[data-job-id="{queued["id"]}"]')
            row.wait_for(timeout=20_000)
            wait_until(lambda: "queued" == row.get_attribute("data-state"), 10, 0.2,
                       f"queued row: {row.get_attribute('data-state')} {client.get(queued['id'])['state']} {client.list()}")
            sidebar.locator(".jp-GPUQueue-queue li", has_text="waiting-job").wait_for(timeout=10_000)
            sidebar.locator(".jp-GPUQueue-progress").first.wait_for(timeout=20_000)
            dismiss_news(page, 500)
            sidebar.screenshot(path=str(IMAGES / "sidebar.png"))

            row.locator("button", has_text="Cancel").click()
            dialog = page.locator(".jp-Dialog")
            dialog.wait_for(timeout=10_000)
            assert "Cancel job?" in dialog.inner_text()
            dialog.locator("button", has_text="Cancel job").click()
            wait_until(lambda: client.get(queued["id"])["state"] == "cancelled", 20, 0.2, "the cancel")
            sidebar.locator(f'.jp-GPUQueue-job[data-job-id="{queued["id"]}"][data-state="cancelled"]').wait_for(
                timeout=20_000
            )

            # the notebook's job finishes: the sidebar says so, and so does the cell's widget
            sidebar.locator('.jp-GPUQueue-job[data-state="succeeded"]', has_text="demo-train").wait_for(
                timeout=90_000
            )
            widget = page.locator(".gpuqueue-job")
            widget.wait_for(timeout=20_000)
            page.wait_for_function(
                "() => document.querySelector('.gpuqueue-job')?.innerText.includes('succeeded')", timeout=30_000
            )
            assert "80 / 80" in widget.inner_text()
            assert widget.locator("svg.gpuqueue-curve polyline").count() == 1
            page.locator(".jp-OutputArea-output", has_text="back in the notebook").wait_for(timeout=20_000)
            cell = page.locator(".jp-Notebook .jp-Cell").nth(1)
            cell.scroll_into_view_if_needed()
            dismiss_news(page, 500)
            cell.screenshot(path=str(IMAGES / "cell-widget.png"))

            # idle: count the sidebar's requests for IDLE_SECONDS
            api_requests: list[str] = []
            page.on("request", lambda r: api_requests.append(r.url) if "/gpuqueue/api/" in r.url else None)
            page.wait_for_timeout(IDLE_SECONDS * 1000)
            rate = len(api_requests) / IDLE_SECONDS
            print(f"\nidle sidebar: {len(api_requests)} gpuqueue requests in {IDLE_SECONDS:.0f} s = {rate:.2f}/s")
            assert rate <= 1.0, api_requests
        finally:
            browser.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))

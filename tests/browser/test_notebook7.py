"""The cell widget in a real Notebook 7 (the ``notebook`` package) in Debian's chromium.

Runs a notebook: a ``%%train`` cell whose widget shows live progress (a count between the first
and the last step, read from the page) and then its results come back; a long ``%%train`` cell
cancelled from its own widget while it waits (the job ends cancelled, its process is gone, the
cell returns); the last cell runs and reads what the first brought back. Saves the screenshot
docs/user-guide.md shows.
"""

from __future__ import annotations

import json
import re

import pytest

from browsertools import ARGS, CHROMIUM, IMAGES, click_widget_cancel, dismiss_news, needs_chromium, notebook

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs_chromium]

TRAIN_CELL = """%%train --gpus 1 --name nb7-train
import time
import gpuqueue
for step in range(40):
    loss = 2.0 * 0.9 ** step + 0.05
    print(f"step {step}: loss {loss:.3f}", flush=True)
    gpuqueue.log(step=step, loss=loss)
    gpuqueue.progress(step + 1, 40)
    time.sleep(0.25)
model_loss = loss
"""

LONG_CELL = """%%train --gpus 1 --name nb7-long
import time
for step in range(1000):
    print(f"step {step}", flush=True)
    time.sleep(0.5)
"""

LAST_CELL = "print(f'the last cell ran: model_loss={model_loss:.3f}')"


def test_cell_widget_in_notebook7(jupyter_server_factory):
    pytest.importorskip("notebook", minversion="7")
    from playwright.sync_api import sync_playwright

    server = jupyter_server_factory(gpus=1, args=["--JupyterNotebookApp.expose_app_in_browser=True"])
    (server.work_dir / "nb7.ipynb").write_text(
        json.dumps(notebook(["%load_ext jupyter_gpuqueue", TRAIN_CELL, LONG_CELL, LAST_CELL])))
    client = server.client()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(f"{server.url}notebooks/nb7.ipynb?token={server.token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            assert page.evaluate("() => window.jupyterapp.name") == "Jupyter Notebook"
            dismiss_news(page, 2_000)
            page.wait_for_function(
                "() => window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'",
                timeout=60_000,
            )
            page.evaluate("() => { void window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            cells = page.locator(".jp-Notebook .jp-Cell")

            # the widget renders and shows live progress: a count strictly between 0 and 40
            widget = cells.nth(1).locator(".gpuqueue-job")
            widget.wait_for(timeout=60_000)
            page.wait_for_function(
                """() => { const m = document.querySelector('.gpuqueue-job')?.innerText.match(/(\\d+) \\/ 40 /);
                           return m && +m[1] > 12 && +m[1] < 36; }""", timeout=60_000)
            seen = int(re.search(r"(\d+) / 40 ", widget.inner_text()).group(1))
            assert "running on local" in widget.inner_text()
            widget.locator("svg.gpuqueue-curve polyline").wait_for(timeout=10_000)
            widget.scroll_into_view_if_needed()
            page.screenshot(path=str(IMAGES / "notebook7-widget.png"))  # Notebook 7's own page, widget in view
            # it ends, and the names it assigned come back into the notebook
            widget.locator("text=succeeded after").wait_for(timeout=60_000)
            assert "40 / 40" in widget.inner_text()
            cells.nth(1).locator(".jp-OutputArea-output", has_text="back in the notebook").wait_for(timeout=20_000)

            # the long cell waits for its job; Cancel in its widget ends it and the cell returns
            long_widget = cells.nth(2).locator(".gpuqueue-job")
            long_widget.locator("text=running on").wait_for(timeout=60_000)
            [long_job] = [j for j in client.list() if j["name"] == "nb7-long"]
            click_widget_cancel(long_widget)
            long_widget.locator("text=cancelled after").wait_for(timeout=30_000)
            assert client.get(long_job["id"])["state"] == "cancelled"
            assert server.job_pids(wait_s=10) == []  # its runner exits right after it reports the end
            cells.nth(2).locator(".jp-OutputArea-output", has_text="cancelled (its Cancel button)").wait_for(
                timeout=20_000)
            last = cells.nth(3).locator(".jp-OutputArea-output", has_text="the last cell ran")
            last.wait_for(timeout=20_000)
            assert "model_loss=0.0" in last.inner_text()  # 2 * 0.9**39 + 0.05 = 0.079
            print(f"\nNotebook 7: progress seen mid-run at {seen}/40")
        finally:
            browser.close()

"""A real JupyterLab in Debian's chromium: the "GPU Queue" sidebar and the cell widget.

A command job runs first (the sidebar lists it under "Recently finished" with its Delete
button). Then a notebook: a ``%%train`` cell the sidebar follows from running to succeeded (its
GPU on the map, the user's share standing), a job queued behind it that the sidebar cancels
(with its confirmation dialog), then a long ``%%train`` cell cancelled from its own widget while
the cell waits (the job ends cancelled, its process is gone, the cell returns and the next cell
runs).
Saves the screenshots the docs show (light and dark theme), counts the sidebar's requests
while idle, then deletes finished jobs from the sidebar (Delete, from the keyboard, and its
confirmation dialog; a job deleted meanwhile elsewhere shows the server's answer).

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the built lab extension
(``pip install .``, or ``jlpm --cwd labextension build`` with the build on JUPYTER_PATH).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest

from browsertools import (ARGS, CHROMIUM, IMAGES, click_widget_cancel, contrast, dismiss_news,
                          lab_has_extension, needs_chromium, notebook, screenshot_content, stays_put,
                          wrapped_pieces)
from gpuqueue.queue.errors import NotFound
from helpers.servers import wait_until

IDLE_SECONDS = float(os.environ.get("GPUQUEUE_IDLE_SECONDS", "15"))  # docs: 30

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs_chromium]

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

LONG_CELL = """%%train --gpus 1 --name long-train
import time
for step in range(1000):
    print(f"step {step}", flush=True)
    time.sleep(0.5)
"""

NEXT_CELL = "print('the next cell ran')"


def test_sidebar_and_cell_widget_in_jupyterlab(jupyter_server_factory):
    if not lab_has_extension():
        pytest.skip("the lab extension is not built/installed (pip install . builds it)")
    from playwright.sync_api import sync_playwright

    server = jupyter_server_factory(gpus=1, args=["--LabApp.expose_app_in_browser=True"])
    (server.work_dir / "demo.ipynb").write_text(
        json.dumps(notebook(["%load_ext jupyter_gpuqueue", TRAIN_CELL, LONG_CELL, NEXT_CELL]))
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
            # the "GPU Queue" tab in the left panel, at JupyterLab's default width
            tab = page.locator('.jp-SideBar [data-id="gpuqueue-sidebar"]')
            assert tab.get_attribute("title") == "GPU Queue"
            tab.click()
            sidebar = page.locator("#gpuqueue-sidebar")
            sidebar.locator("text=no active jobs").wait_for(timeout=20_000)
            pool = sidebar.locator('.jp-GPUQueue-pool[data-pool="default"]')
            assert "1 of 1 free" in pool.inner_text()
            assert sidebar.locator('.jp-GPUQueue-node[data-node="local"] .jp-GPUQueue-gpu').evaluate_all(
                "els => els.map(e => e.dataset.state)") == ["free"]
            # a job that has run: it is under "Recently finished", with Delete and no Cancel
            # (the screenshot below shows all three kinds of row)
            ran = client.submit({"kind": "command", "command": [sys.executable, "-c", "print('data ready')"],
                                 "gpus": 1, "name": "prepare-data"})
            ran_row = sidebar.locator(f'.jp-GPUQueue-finished .jp-GPUQueue-job[data-job-id="{ran["id"]}"]'
                                      '[data-state="succeeded"]')
            ran_row.wait_for(timeout=60_000)
            assert ran_row.locator("button", has_text="Delete").count() == 1
            assert ran_row.locator("button", has_text="Cancel").count() == 0

            # wait for the kernel, then run the notebook
            page.wait_for_function(
                "() => window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status === 'idle'",
                timeout=60_000,
            )
            # (not awaited: the command's promise resolves only when the cells have run)
            page.evaluate("() => { void window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            running = sidebar.locator('.jp-GPUQueue-job[data-state="running"]', has_text="demo-train")
            running.wait_for(timeout=60_000)

            # another job waits for the only GPU: it shows in my jobs with its place in line
            queued = client.submit({"kind": "command", "command": [sys.executable, "-c", "pass"],
                                    "gpus": 1, "name": "waiting-job"})
            row = sidebar.locator(f'.jp-GPUQueue-job[data-job-id="{queued["id"]}"]')
            row.wait_for(timeout=20_000)
            wait_until(lambda: "queued" == row.get_attribute("data-state"), 10, 0.2,
                       f"queued row: {row.get_attribute('data-state')} {client.get(queued['id'])['state']}")
            row.locator(".jp-GPUQueue-detail", has_text="1st in line").wait_for(timeout=10_000)
            # a live job can be cancelled, not deleted
            assert row.locator("button", has_text="Cancel").count() == 1
            assert row.locator("button", has_text="Delete").count() == 0
            assert running.locator("button", has_text="Delete").count() == 0
            sidebar.locator(".jp-GPUQueue-progress").first.wait_for(timeout=20_000)
            # the GPU map: my job on the one GPU; the share view in words
            gpu = sidebar.locator('.jp-GPUQueue-node .jp-GPUQueue-gpu[data-state="mine"]')
            gpu.wait_for(timeout=10_000)
            assert "local GPU 0: your job demo-train" in gpu.get_attribute("title")
            assert "0 of 1 free" in pool.inner_text()
            wait_until(lambda: sidebar.locator('dd[data-share="now"]').inner_text() == "1 job on 1 GPU", 10, 0.2,
                       "the share view to count the running job")
            assert "GPU-hour" in sidebar.locator('dd[data-share="usage"]').inner_text()
            assert sidebar.locator('dd[data-share="place"]').inner_text() == "1st of 1 user"
            assert "usage_gpu_hours" not in sidebar.inner_text()  # words, not field names
            assert wrapped_pieces(page, "#gpuqueue-sidebar") == []  # no number broken over lines
            width = sidebar.bounding_box()["width"]
            dismiss_news(page, 500)
            screenshot_content(page, "#gpuqueue-sidebar", IMAGES / "sidebar.png")
            # the dark theme: the same page, legible
            page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', "
                          "{theme: 'JupyterLab Dark'})")
            page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=20_000)
            page.wait_for_timeout(500)
            for sel in ('#gpuqueue-sidebar dd[data-share="usage"]', "#gpuqueue-sidebar .jp-GPUQueue-poolhead",
                        "#gpuqueue-sidebar .jp-GPUQueue-share dt"):
                assert contrast(page, sel) >= 4.5, sel
            screenshot_content(page, "#gpuqueue-sidebar", IMAGES / "sidebar-dark.png")
            page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', "
                          "{theme: 'JupyterLab Light'})")

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
            widget = page.locator(".gpuqueue-job").first
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
            # the job's end notification (tests/browser/test_notify.py) would cover the log's end
            hide = page.add_style_tag(content=".Toastify { display: none !important; }")
            cell.screenshot(path=str(IMAGES / "cell-widget.png"))
            hide.evaluate("e => e.remove()")

            # the next cell waits for its long job; Cancel in its own widget ends it
            long_widget = page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".gpuqueue-job")
            long_widget.locator("text=running on").wait_for(timeout=60_000)
            # its buttons stay where they are while its log tail grows a line at a time (they
            # were below it and moved down at each redraw: a click whose press and release
            # straddled one reached no button, and "Confirm cancel" never came)
            long_widget.locator("text=step 1").wait_for(timeout=20_000)
            boxes = stays_put(long_widget.locator("button", has_text="Cancel").first, 2.0)
            assert len(boxes) == 1, boxes
            [long_job] = [j for j in client.list() if j["name"] == "long-train"]
            click_widget_cancel(long_widget)
            long_widget.locator("text=cancelled after").wait_for(timeout=30_000)
            assert client.get(long_job["id"])["state"] == "cancelled"
            assert server.job_pids(wait_s=10) == []  # its runner exits right after it reports the end
            page.locator(".jp-Notebook .jp-Cell").nth(2).locator(
                ".jp-OutputArea-output", has_text="cancelled (its Cancel button)").wait_for(timeout=20_000)
            page.locator(".jp-Notebook .jp-Cell").nth(3).locator(
                ".jp-OutputArea-output", has_text="the next cell ran").wait_for(timeout=20_000)

            # idle: count the sidebar's requests for IDLE_SECONDS
            api_requests: list[str] = []
            page.on("request", lambda r: api_requests.append(r.url) if "/gpuqueue/api/" in r.url else None)
            page.wait_for_timeout(IDLE_SECONDS * 1000)
            rate = len(api_requests) / IDLE_SECONDS
            print(f"\nsidebar width {width:.0f} px; idle sidebar: {len(api_requests)} gpuqueue requests in "
                  f"{IDLE_SECONDS:.0f} s = {rate:.2f}/s")
            assert rate <= 1.0, api_requests

            delete_finished_jobs(page, sidebar, client, queued["id"])
        finally:
            browser.close()


def delete_finished_jobs(page: Any, sidebar: Any, client: Any, cancelled_id: str) -> None:
    """Delete the cancelled ``waiting-job`` from its row, from the keyboard, through the
    confirmation dialog: the row goes, and so does the job from the REST list. Then the
    succeeded ``demo-train``, which gets deleted elsewhere while its dialog is open: the server's
    404 shows in the sidebar's status line."""
    row = sidebar.locator(f'.jp-GPUQueue-job[data-job-id="{cancelled_id}"][data-state="cancelled"]')
    delete = row.get_by_role("button", name=f"Delete job {cancelled_id} (waiting-job)", exact=True)
    assert delete.inner_text() == "Delete"
    assert row.locator("button", has_text="Cancel").count() == 0
    status = sidebar.locator(".jp-GPUQueue-status")
    delete.focus()
    drawn = status.inner_text()
    # a redraw (every 5 s while idle) replaces the buttons and gives the focus back to this one
    wait_until(lambda: status.inner_text() != drawn, 15, 0.2, "the sidebar's next redraw")
    assert page.evaluate("() => document.activeElement.getAttribute('aria-label')") == (
        f"Delete job {cancelled_id} (waiting-job)")
    page.keyboard.press("Enter")
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=10_000)
    text = dialog.inner_text()
    assert "Delete job?" in text and f"{cancelled_id} (waiting-job)" in text, text
    assert "results, logs and checkpoints" in text, text
    dialog.get_by_role("button", name="Delete job", exact=True).click()
    row.wait_for(state="detached", timeout=10_000)
    assert cancelled_id not in [j["id"] for j in client.list()]
    assert "⚠" not in status.inner_text()

    [demo] = [j for j in client.list() if j["name"] == "demo-train"]
    demo_row = sidebar.locator(f'.jp-GPUQueue-job[data-job-id="{demo["id"]}"]')
    demo_row.get_by_role("button", name=f"Delete job {demo['id']} (demo-train)", exact=True).click()
    dialog.wait_for(timeout=10_000)
    client.delete_job(demo["id"])  # from a terminal, meanwhile
    dialog.get_by_role("button", name="Delete job", exact=True).click()
    with pytest.raises(NotFound) as refused:
        client.delete_job(demo["id"])
    status.locator(f"text={demo['id']}").wait_for(timeout=10_000)
    assert status.inner_text() == f"⚠ delete {demo['id']}: {refused.value}", status.inner_text()
    demo_row.wait_for(state="detached", timeout=20_000)  # gone at the next refresh


def test_sidebar_gpu_map_in_cluster_mode(jupyter_server_factory, redis_factory, tmp_path):
    """bob's JupyterLab in cluster mode (the extension forwards to a real cluster's API): alice's
    GPUs are only busy, his own are his, a node whose worker died is not answering."""
    if not lab_has_extension():
        pytest.skip("the lab extension is not built/installed (pip install . builds it)")
    from playwright.sync_api import sync_playwright

    from cluster.conftest import TOKENS, Cluster

    c = Cluster(tmp_path / "cluster", redis_factory(), {"n1": 2, "n2": 1, "n3": 1})
    try:
        c.start()
        alice = c.submit("alice", ticks=600, gpus=2, name="alice-secret-run")
        bob = c.submit("bob", ticks=600, gpus=1, name="bob-train")
        root = c.client("root")
        wait_until(lambda: all(root.get(j)["state"] == "running" for j in (alice, bob)), 30, 0.1, "both running")
        bob_node = root.get(bob)["attempts"][-1]["node"]
        idle_node = ({"n2", "n3"} - {bob_node}).pop()
        c.kill(f"worker-{idle_node}")
        server = jupyter_server_factory(args=[f"--GPUQueueApp.api_url={c.url}"],
                                        env={"GPUQUEUE_API_TOKEN": TOKENS["bob"]})
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(f"{server.url}lab?token={server.token}")
                page.locator('.jp-SideBar [data-id="gpuqueue-sidebar"]').click(timeout=60_000)
                dismiss_news(page, 2_000)
                sidebar = page.locator("#gpuqueue-sidebar")

                def states() -> dict[str, list[str]]:
                    return sidebar.locator(".jp-GPUQueue-node").evaluate_all(
                        """ns => Object.fromEntries(ns.map(n => [n.dataset.node,
                               [...n.querySelectorAll('.jp-GPUQueue-gpu')].map(g => g.dataset.state)]))""")

                expected = {"n1": ["busy", "busy"], bob_node: ["mine"], idle_node: ["down"]}
                try:
                    wait_until(lambda: states() == expected, 30, 0.3, f"the map {expected} (node timeout 2 s)")
                except AssertionError as e:
                    raise AssertionError(f"{e}; the map shows {states()}") from None
                n1 = sidebar.locator('.jp-GPUQueue-node[data-node="n1"] .jp-GPUQueue-gpu').first
                assert n1.get_attribute("title") == "n1 GPU 0: busy (other user)"
                mine = sidebar.locator(f'.jp-GPUQueue-node[data-node="{bob_node}"] .jp-GPUQueue-gpu')
                assert "your job bob-train" in mine.get_attribute("title")
                html = sidebar.inner_html()
                assert "alice" not in html and "secret" not in html  # nothing of another user's job
                assert "other user" in sidebar.locator(".jp-GPUQueue-legend").inner_text()
                assert "not answering" in sidebar.locator(".jp-GPUQueue-legend").inner_text()
                assert sidebar.locator('dd[data-share="place"]').inner_text().endswith("of 2 users")
                assert wrapped_pieces(page, "#gpuqueue-sidebar") == []
                screenshot_content(page, "#gpuqueue-sidebar", IMAGES / "sidebar-cluster.png")
            finally:
                browser.close()
    finally:
        c.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))

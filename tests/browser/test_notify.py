"""A real JupyterLab in Debian's chromium: a notification when one of my jobs ends.

With the GPU Queue sidebar collapsed, jobs submitted through the REST API (as a
``%%train --background`` cell's kernel does) notify when they end: success for a job that
succeeded, error with its reason for one that failed or timed out (these stay), each with its
name, id and runtime, and the actions that open the sidebar and copy ``%gpuqueue attach ID``. A job finished before the page loaded never notifies, and nothing
notifies twice or again after a reload. While the sidebar is hidden the page asks the server
nothing when no job is queued or running, and only every ``watchInterval`` seconds while one
is. ``notifyOnJobEnd`` (its command in the palette) is honoured at once. With the sidebar open,
its own poll feeds the notifications (no second poll); a cancelled job notifies as info.

Needs ``/usr/bin/chromium`` and the built lab extension (see test_sidebar.py).
"""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from browsertools import ARGS, CHROMIUM, dismiss_news, lab_has_extension, needs_chromium
from helpers.servers import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs_chromium]

TOGGLE = "gpuqueue:toggle-notify-on-job-end"
SETTINGS = "lab/api/settings/jupyter-gpuqueue:plugin"


def command_job(name: str, code: str) -> dict:
    """A CPU job running ``python -c code``, no retries."""
    return {"kind": "command", "command": [sys.executable, "-c", code], "name": name, "retries": 0}


def test_job_end_notifications(jupyter_server_factory):
    if not lab_has_extension():
        pytest.skip("the lab extension is not built/installed (pip install . builds it)")
    from playwright.sync_api import sync_playwright

    server = jupyter_server_factory(gpus=1, args=["--LabApp.expose_app_in_browser=True"])
    client = server.client()
    old = client.submit(command_job("nt-old", "pass"))
    wait_until(lambda: client.get(old["id"])["state"] == "succeeded", 30, 0.1, "the old job")

    def ended(job_id: str) -> bool:
        return client.get(job_id)["state"] in ("succeeded", "failed", "cancelled", "timed_out")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            calls: list[tuple[float, str]] = []
            page.on("request", lambda r: calls.append((time.monotonic(), r.url)) if "/gpuqueue/api/" in r.url else None)

            def toast(text: str):
                return page.locator(".Toastify__toast", has_text=text)

            def load() -> None:
                page.goto(f"{server.url}lab?token={server.token}")
                # this branch's build is the one loaded: it has the toggle command
                page.wait_for_function(f"() => window.jupyterapp?.commands.hasCommand('{TOGGLE}')", timeout=60_000)
                page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
                assert not page.locator("#gpuqueue-sidebar").is_visible()
                dismiss_news(page, 2_000)

            def requests_during(seconds: float) -> list[str]:
                start = time.monotonic()
                page.wait_for_timeout(seconds * 1000)
                return [u for t, u in calls if t >= start]

            # --- the sidebar collapsed: one look at the start, then nothing while no job is live
            load()
            wait_until(lambda: page.wait_for_timeout(100) or any("/api/jobs" in u for _, u in calls), 30, 0,
                       "the first look")
            assert requests_during(4) == []
            assert toast("nt-").count() == 0  # the job that ended before the page loaded

            ok = client.submit(command_job("nt-ok", "import time; time.sleep(2)"))
            bad = client.submit(command_job("nt-bad", "import time, sys; time.sleep(1); sys.exit(3)"))
            slow = client.submit({**command_job("nt-slow", "import time; time.sleep(60)"), "timeout_s": 1})
            submitted = time.monotonic()
            for job in (ok, bad, slow):
                toast(job["id"]).wait_for(timeout=45_000)
            print(f"\nnotified {time.monotonic() - submitted:.1f} s after the submission (sidebar collapsed)")
            ok_text, bad_text = toast(ok["id"]).inner_text(), toast(bad["id"]).inner_text()
            assert re.search(rf"nt-ok \({ok['id']}\) succeeded after [23]s", ok_text), ok_text
            assert "Toastify__toast--success" in toast(ok["id"]).get_attribute("class")
            error = client.get(bad["id"])["error"]
            assert error == "the job process exited with code 3"
            assert re.search(rf"nt-bad \({bad['id']}\) failed after [12]s\s+{error}", bad_text), bad_text
            assert "Toastify__toast--error" in toast(bad["id"]).get_attribute("class")
            assert "Show the GPU Queue" in bad_text and "Copy attach command" in bad_text
            slow_text = toast(slow["id"]).inner_text()
            assert client.get(slow["id"])["state"] == "timed_out"
            assert re.search(rf"nt-slow \({slow['id']}\) timed out after \d+s\s+its time limit is 1s", slow_text), slow_text
            assert "Toastify__toast--error" in toast(slow["id"]).get_attribute("class")
            # "Copy attach command" copies %gpuqueue attach ID
            page.evaluate("() => document.addEventListener('copy', e => { window.copied = e.clipboardData.getData('text'); })")
            toast(slow["id"]).get_by_role("button", name="Copy attach command").click()
            assert page.evaluate("() => window.copied") == f"%gpuqueue attach {slow['id']}"
            # while they ran: a look on the server's announcement, then one every 10 s at most
            looks = [u for t, u in calls if t >= submitted and "/api/jobs?" in u]
            assert 1 <= len(looks) <= 2 + (time.monotonic() - submitted) / 10, looks
            # none live any more: nothing asked, nothing notified twice; the failure stays
            assert requests_during(12) == []
            assert toast(ok["id"]).count() == 0 and toast(bad["id"]).count() == 1
            # its action opens the sidebar
            toast(bad["id"]).get_by_role("button", name="Show the GPU Queue").click()
            page.locator("#gpuqueue-sidebar").wait_for(state="visible", timeout=10_000)
            page.evaluate("() => window.jupyterapp.shell.collapseLeft()")

            # --- notifyOnJobEnd off (its command): honoured at once, saved in the settings
            page.evaluate(f"() => window.jupyterapp.commands.execute('{TOGGLE}')")
            wait_until(lambda: server.api("GET", SETTINGS).json()["settings"].get("notifyOnJobEnd") is False,
                       10, 0.2, "the setting saved")
            quiet = client.submit(command_job("nt-quiet", "import time; time.sleep(1)"))
            wait_until(lambda: ended(quiet["id"]), 30, 0.2, "the quiet job")
            assert requests_during(4) == []
            assert toast("nt-quiet").count() == 0
            # on again: the next job notifies, the one that ended meanwhile does not
            page.evaluate(f"() => window.jupyterapp.commands.execute('{TOGGLE}')")
            after = client.submit(command_job("nt-after", "import time; time.sleep(1)"))
            toast(after["id"]).wait_for(timeout=45_000)
            assert toast("nt-quiet").count() == 0

            # --- reload: nothing notifies again; then the sidebar open, a faster watch interval
            r = server.api("PUT", SETTINGS, data=json.dumps({"raw": json.dumps({"watchInterval": 4})}))
            assert r.status_code == 204, r.text
            calls.clear()
            load()
            wait_until(lambda: page.wait_for_timeout(100) or any("/api/jobs" in u for _, u in calls), 30, 0,
                       "the first look")
            page.wait_for_timeout(3_000)
            assert toast("nt-").count() == 0
            page.locator('.jp-SideBar [data-id="gpuqueue-sidebar"]').click()
            sidebar = page.locator("#gpuqueue-sidebar")
            sidebar.locator("text=no active jobs").wait_for(timeout=20_000)
            long = client.submit(command_job("nt-long", "import time; time.sleep(120)"))
            sidebar.locator(f'.jp-GPUQueue-job[data-job-id="{long["id"]}"][data-state="running"]').wait_for(
                timeout=30_000)
            # the sidebar polls every 2 s while a job runs; the watcher (every 4 s) asks nothing more
            looks = [u for u in requests_during(12) if "/api/jobs?" in u]
            assert len(looks) <= 7, looks
            client.cancel(long["id"])
            toast(long["id"]).wait_for(timeout=30_000)
            assert re.search(rf"nt-long \({long['id']}\) was cancelled after \d+s", toast(long["id"]).inner_text())
            assert "Toastify__toast--info" in toast(long["id"]).get_attribute("class")
            assert toast(ok["id"]).count() + toast(bad["id"]).count() + toast("nt-quiet").count() == 0
        finally:
            browser.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))

"""The dashboard in a real browser (headless Chromium) against a coordinator running a real job.

One coordinator is served for the module; a simulated fleet of three devices trains a real
two-round job on the tiny model through the ExecuTorch runtime, then a second job is left
running with one device whose upload was refused (NaN in its tensors). The tests then look
at what an operator would: the pages render, charts have their data points and no script
errors, the rejection shows its reason, admin actions need the login, and a running job's
page updates itself when a result arrives.

Every page that shows something still running refreshes itself while the tests read it, so
the tests read live parts with ``browser.snapshot`` (one script, never split by a refresh)
and hold the refresh (``browser.hold_refresh``) before clicking in a live part.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from browser import chromium_driver, console_errors, hold_refresh, refreshes, screenshot, snapshot, wait_for
from fleet_harness import ENROLLMENT_KEY, private_server, seeded_artifact_cache

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def artifact_cache(tiny_fp32_artifact, tmp_path_factory):
    return seeded_artifact_cache(tiny_fp32_artifact, tmp_path_factory)


@pytest.fixture(scope="module")
def coordinator(artifact_cache, tmp_path_factory):
    """A served coordinator with one completed fleet job and one running job with a rejection."""
    from coordinator_harness import ADMIN_TOKEN, FakeTrainer, JOB_TIER, manifest_of, meta, register, start_adapter
    from coordinator_harness import upload
    from fleet.simulator import FleetSimulation, FleetSpec

    tmp = tmp_path_factory.mktemp("dashboard")
    server = private_server(tmp / "coordinator", artifact_cache, ["--dashboard-poll", "1"])
    try:
        spec = FleetSpec(devices=3, fleet="mixed", rounds=2, task="bbcnews", partition="iid", seed=3, dropout=0.0,
                         workers=2, devices_per_round=3, min_updates=3, round_deadline_s=300,
                         job={"model": "tiny", "tier": dict(JOB_TIER), "local_steps": 2, "lr": 0.5,
                              "eval_examples": 10, "strategy": "fedavg", "name": "fleet job"})
        report = FleetSimulation(spec, server.base_url, ADMIN_TOKEN, ENROLLMENT_KEY, tmp / "run",
                                 progress=False).run(timeout_s=900)
        assert report["status"] == "completed", report
        admin = server.admin()
        running = admin.running_job(name="running job", rounds=2, devices_per_round=2, min_updates=2)
        _, device = register(server, name="phone-with-nan")
        task = device.get("/api/v1/tasks/next").json()
        good = FakeTrainer(manifest_of(device, task)).update(start_adapter(admin, running["job_id"], 0), seed=1)
        bad = {k: v.copy() for k, v in good.items()}
        first = sorted(bad)[0]
        bad[first][0, 0] = np.nan
        refused = upload(device, task, bad, meta())
        assert refused.status_code == 422, refused.text
        yield {"server": server, "fleet_job": report["job_id"], "running_job": running["job_id"],
               "device": device, "task": task, "good_update": good, "admin_token": ADMIN_TOKEN}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    driver = chromium_driver()
    yield driver
    driver.quit()


JOB_CHARTS = ("chart-metric-round", "chart-metric-time", "chart-loss", "chart-bytes", "chart-step", "chart-flops")


def _open(driver, url: str) -> None:
    driver.get(url)
    wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete")


def test_overview_and_fleet_pages_list_jobs_and_devices(coordinator, browser):
    base = coordinator["server"].base_url
    _open(browser, base + "/")
    page = snapshot(browser, {"jobs": "#jobs-rows tr[data-job-id]"})
    jobs = {r["attrs"]["data-job-id"]: r for r in page["rows"]["jobs"]}
    assert set(jobs) == {str(coordinator["fleet_job"]), str(coordinator["running_job"])}
    assert "completed" in jobs[str(coordinator["fleet_job"])]["text"]
    screenshot(browser, "overview")

    _open(browser, base + "/devices")
    devices_rows = {"devices": "#devices-rows tr[data-device-id]"}
    devices = snapshot(browser, devices_rows)["rows"]["devices"]
    assert len(devices) == 4
    fleet_rows = [r for r in devices if "phone-with-nan" not in r["text"]]
    assert len(fleet_rows) == 3
    for row in fleet_rows:
        cells = row["cells"]
        assert cells[8] in ("online",) or cells[8].startswith("offline"), cells
        assert cells[10].startswith("r4 k2"), f"tier last assigned missing: {cells}"
        assert cells[11].startswith(f"job {coordinator['fleet_job']} round 2"), cells
        assert cells[14].endswith("%"), f"FLOP utilization missing: {cells}"
    screenshot(browser, "fleet")
    # The filter box narrows the table in the browser, and a live refresh of the table keeps it narrowed.
    browser.find_element("id", "filter").send_keys("phone-with-nan")
    visible = [r for r in snapshot(browser, devices_rows)["rows"]["devices"] if r["displayed"]]
    assert len(visible) == 1 and "phone-with-nan" in visible[0]["text"], visible
    seen = refreshes(browser)
    wait_for(browser, lambda d: refreshes(d) > seen, 20, "the fleet page did not refresh itself")
    page = snapshot(browser, devices_rows)
    assert len(page["rows"]["devices"]) == 4
    visible = [r for r in page["rows"]["devices"] if r["displayed"]]
    assert len(visible) == 1 and "phone-with-nan" in visible[0]["text"], visible
    assert console_errors(browser) == []


def test_job_page_charts_have_every_round(coordinator, browser):
    base, job_id = coordinator["server"].base_url, coordinator["fleet_job"]
    _open(browser, f"{base}/jobs/{job_id}")

    def scored(driver):  # the whole page as of the refresh that showed all three scores
        page = snapshot(driver, {"rounds": "#rounds-rows tr[data-round]",
                                 "devices": "#job-devices-rows tr[data-device-id]"}, charts=JOB_CHARTS)
        return page if len(page["charts"]["chart-metric-round"]) == 3 else None

    # Global adapters are scored in the background; the page keeps refreshing until all are.
    page = wait_for(browser, scored, 180, "the accuracy chart never showed the initial adapter and both rounds")
    points = {chart: len(page["charts"][chart]) for chart in JOB_CHARTS}
    assert points["chart-metric-time"] == 3, points
    assert points["chart-loss"] == 3 + 2 * 2, points            # held-out per adapter, device before/after per round
    assert points["chart-bytes"] == 2 * 2, points               # down and up, per round
    assert points["chart-step"] == 3, points                    # one bar per device
    assert points["chart-flops"] == 3, points
    # A point carries its value: the last one is the API's score of round 2's adapter.
    job = requests.get(f"{base}/api/v1/jobs/{job_id}",
                       headers={"Authorization": f"Bearer {coordinator['admin_token']}"}).json()
    last = page["charts"]["chart-metric-round"][-1]
    assert float(last["y"]) == pytest.approx(job["round_history"][-1]["evaluation"]["value"])
    rounds = page["rows"]["rounds"]
    assert [r["attrs"]["data-round"] for r in rounds] == ["1", "2"]
    for row in rounds:
        cells = row["cells"]
        assert cells[6] == "3", cells                            # accepted
        assert cells[11].endswith("B") and cells[12].endswith("B"), cells
    devices = page["rows"]["devices"]
    assert len(devices) == 3 and all(row["text"].count("%") == 1 for row in devices), devices
    assert console_errors(browser) == []
    screenshot(browser, "job")


def test_rejected_upload_shows_its_reason(coordinator, browser):
    base, job_id = coordinator["server"].base_url, coordinator["running_job"]
    _open(browser, f"{base}/jobs/{job_id}")
    rounds = snapshot(browser, {"round": "#rounds-rows tr[data-round='1']"})["rows"]["round"]
    assert len(rounds) == 1
    assert rounds[0]["cells"][7] == "1", rounds[0]["cells"]  # rejected
    _open(browser, f"{base}/jobs/{job_id}/rounds/1")
    rejections = snapshot(browser, {"rejections": "#rejections-rows tr.rejection"},
                          {"reason": "code.reason", "message": "td.message"})["rows"]["rejections"]
    assert len(rejections) == 1
    text, parts = rejections[0]["text"], rejections[0]["parts"]
    assert "phone-with-nan" in text and "422" in text
    assert parts["reason"] == "non_finite"
    assert parts["message"] is not None, rejections[0]
    assert "non-finite" in parts["message"].lower() or "nan" in parts["message"].lower()
    assert console_errors(browser) == []
    screenshot(browser, "round")


def test_admin_actions_need_the_login(coordinator, browser):
    server, job_id = coordinator["server"], coordinator["running_job"]
    base = server.base_url
    browser.delete_all_cookies()
    _open(browser, f"{base}/jobs/{job_id}")
    assert browser.find_elements("id", "pause-job") == []
    assert "Log in" in browser.find_element("id", "admin-actions").text
    # Posting the action anyway (as a forged form would) is sent to the login page; nothing changes.
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {method: 'POST', redirect: 'follow'}).then(r => done(r.url)).catch(e => done(String(e)));
    """, f"{base}/jobs/{job_id}/pause")
    assert "/login" in status
    assert server.admin().job(job_id)["status"] == "running"
    _open(browser, f"{base}/jobs/new")
    assert "/login" in browser.current_url

    # A wrong token is refused with a message.
    browser.find_element("id", "token").send_keys("not-the-token")
    browser.find_element("id", "login-submit").click()
    wait_for(browser, lambda d: d.find_elements("css selector", ".flash.error"))
    # The right one brings the operator back to where they were going.
    browser.find_element("id", "token").send_keys(coordinator["admin_token"])
    browser.find_element("id", "login-submit").click()
    wait_for(browser, lambda d: d.current_url.endswith("/jobs/new"))

    _open(browser, f"{base}/jobs/{job_id}")
    hold_refresh(browser)  # the buttons are in a live part: it must not be replaced between finding and clicking
    browser.find_element("id", "pause-job").click()
    wait_for(browser, lambda d: d.find_elements("id", "resume-job"))
    assert server.admin().job(job_id)["status"] == "paused"
    assert "paused" in browser.find_element("id", "job-status").text
    hold_refresh(browser)
    browser.find_element("id", "resume-job").click()
    wait_for(browser, lambda d: d.find_elements("id", "pause-job"))
    assert server.admin().job(job_id)["status"] == "running"

    # A form without this session's CSRF token is refused even when logged in.
    refused = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {method: 'POST', body: new URLSearchParams({csrf_token: 'forged'})})
            .then(r => done(r.status)).catch(e => done(String(e)));
    """, f"{base}/jobs/{job_id}/pause")
    assert refused == 400
    assert server.admin().job(job_id)["status"] == "running"

    browser.find_element("id", "logout").click()
    wait_for(browser, lambda d: d.find_elements("id", "login-link"))
    assert console_errors(browser, expected_statuses=(400, 401)) == []  # the wrong token, the forged form


def test_running_job_page_updates_itself(coordinator, browser):
    from coordinator_harness import meta, upload

    base, job_id = coordinator["server"].base_url, coordinator["running_job"]
    _open(browser, f"{base}/jobs/{job_id}")
    assert browser.find_element("tag name", "body").get_attribute("data-live") == "1"

    def accepted(driver) -> str:
        rows = snapshot(driver, {"round": "#rounds-rows tr[data-round='1']"})["rows"]["round"]
        assert len(rows) == 1, rows
        return rows[0]["cells"][6]

    assert accepted(browser) == "0"
    # A refresh that brings nothing new replaces nothing: every row and chart point is the same node after it
    # (this job has evaluation off, so nothing on its page changes until the upload below).
    kept = "#rounds-rows tr, #job-devices-rows tr, .chart .pt-point"
    marked = browser.execute_script(
        "const nodes = document.querySelectorAll(arguments[0]); nodes.forEach(n => { n.__kept = true; });"
        " return nodes.length;", kept)
    assert marked > 0
    seen = refreshes(browser)
    wait_for(browser, lambda d: refreshes(d) > seen, 20, "the job page did not refresh itself")
    assert browser.execute_script(
        "const nodes = Array.from(document.querySelectorAll(arguments[0]));"
        " return nodes.length === arguments[1] && nodes.every(n => n.__kept === true);", kept, marked), \
        "a refresh with nothing new replaced rows or chart points"
    assert accepted(browser) == "0"
    response = upload(coordinator["device"], coordinator["task"], coordinator["good_update"], meta())
    assert response.status_code == 201, response.text
    # No reload: a reload would clear this marker; the page fetched itself and swapped the table.
    browser.execute_script("window.__notReloaded = true;")
    seen = refreshes(browser)
    wait_for(browser, lambda d: accepted(d) == "1", 20, "the job page did not show the new result by itself")
    assert browser.execute_script("return window.__notReloaded === true")
    assert refreshes(browser) > seen
    assert console_errors(browser) == []

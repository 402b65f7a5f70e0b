"""The dashboard in a real browser (headless Chromium) against a coordinator running a real job.

One coordinator is served for the module; a simulated fleet of three devices trains a real
two-round job on the tiny model through the ExecuTorch runtime, then a second job is left
running with one device whose upload was refused (NaN in its tensors). The tests then look
at what an operator would: the pages render, charts have their data points and no script
errors, the rejection shows its reason, admin actions need the login, and a running job's
page updates itself when a result arrives.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from browser import chromium_driver, console_errors, screenshot, wait_for
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


def _points(driver, chart_id: str) -> int:
    return len(driver.find_elements("css selector", f"#{chart_id} .pt-point"))


def _open(driver, url: str) -> None:
    driver.get(url)
    wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete")


def test_overview_and_fleet_pages_list_jobs_and_devices(coordinator, browser):
    base = coordinator["server"].base_url
    _open(browser, base + "/")
    rows = browser.find_elements("css selector", "#jobs-rows tr[data-job-id]")
    assert {r.get_attribute("data-job-id") for r in rows} == {str(coordinator["fleet_job"]),
                                                              str(coordinator["running_job"])}
    assert "completed" in browser.find_element("css selector", f"tr[data-job-id='{coordinator['fleet_job']}']").text
    screenshot(browser, "overview")

    _open(browser, base + "/devices")
    devices = browser.find_elements("css selector", "#devices-rows tr[data-device-id]")
    assert len(devices) == 4
    fleet_rows = [r for r in devices if "phone-with-nan" not in r.text]
    for row in fleet_rows:
        cells = [c.text for c in row.find_elements("css selector", "td")]
        assert cells[8] in ("online",) or cells[8].startswith("offline"), cells
        assert cells[10].startswith("r4 k2"), f"tier last assigned missing: {cells}"
        assert cells[11].startswith(f"job {coordinator['fleet_job']} round 2"), cells
        assert cells[14].endswith("%"), f"FLOP utilization missing: {cells}"
    screenshot(browser, "fleet")
    # The filter box narrows the table in the browser.
    browser.find_element("id", "filter").send_keys("phone-with-nan")
    visible = [r for r in browser.find_elements("css selector", "#devices-rows tr[data-device-id]") if r.is_displayed()]
    assert len(visible) == 1
    assert console_errors(browser) == []


def test_job_page_charts_have_every_round(coordinator, browser):
    base, job_id = coordinator["server"].base_url, coordinator["fleet_job"]
    _open(browser, f"{base}/jobs/{job_id}")
    # Global adapters are scored in the background; the page keeps refreshing until all are.
    wait_for(browser, lambda d: _points(d, "chart-metric-round") == 3, 180,
             "the accuracy chart never showed the initial adapter and both rounds")
    assert _points(browser, "chart-metric-time") == 3
    assert _points(browser, "chart-loss") == 3 + 2 * 2          # held-out per adapter, device before/after per round
    assert _points(browser, "chart-bytes") == 2 * 2             # down and up, per round
    assert _points(browser, "chart-step") == 3                  # one bar per device
    assert _points(browser, "chart-flops") == 3
    # A point carries its value: the last one is the API's score of round 2's adapter.
    job = requests.get(f"{base}/api/v1/jobs/{job_id}",
                       headers={"Authorization": f"Bearer {coordinator['admin_token']}"}).json()
    last = browser.find_elements("css selector", "#chart-metric-round .pt-point")[-1]
    assert float(last.get_attribute("data-y")) == pytest.approx(job["round_history"][-1]["evaluation"]["value"])
    rounds = browser.find_elements("css selector", "#rounds-rows tr[data-round]")
    assert [r.get_attribute("data-round") for r in rounds] == ["1", "2"]
    for row in rounds:
        cells = [c.text for c in row.find_elements("css selector", "td")]
        assert cells[6] == "3", cells                            # accepted
        assert cells[11].endswith("B") and cells[12].endswith("B"), cells
    devices = browser.find_elements("css selector", "#job-devices-rows tr[data-device-id]")
    assert len(devices) == 3 and all(row.text.count("%") == 1 for row in devices)
    assert console_errors(browser) == []
    screenshot(browser, "job")


def test_rejected_upload_shows_its_reason(coordinator, browser):
    base, job_id = coordinator["server"].base_url, coordinator["running_job"]
    _open(browser, f"{base}/jobs/{job_id}")
    row = browser.find_element("css selector", "#rounds-rows tr[data-round='1']")
    assert row.find_elements("css selector", "td")[7].text == "1"  # rejected
    _open(browser, f"{base}/jobs/{job_id}/rounds/1")
    rejections = browser.find_elements("css selector", "#rejections-rows tr.rejection")
    assert len(rejections) == 1
    text = rejections[0].text
    assert "phone-with-nan" in text and "422" in text
    assert rejections[0].find_element("css selector", "code.reason").text == "non_finite"
    assert "non-finite" in rejections[0].find_element("css selector", "td.message").text.lower() or \
        "nan" in rejections[0].find_element("css selector", "td.message").text.lower()
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
    browser.find_element("id", "pause-job").click()
    wait_for(browser, lambda d: d.find_elements("id", "resume-job"))
    assert server.admin().job(job_id)["status"] == "paused"
    assert "paused" in browser.find_element("id", "job-status").text
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
    accepted = lambda d: d.find_element("css selector", "#rounds-rows tr[data-round='1']").find_elements(  # noqa: E731
        "css selector", "td")[6].text
    assert accepted(browser) == "0"
    response = upload(coordinator["device"], coordinator["task"], coordinator["good_update"], meta())
    assert response.status_code == 201, response.text
    # No reload: a reload would clear this marker; the page fetched itself and swapped the table.
    browser.execute_script("window.__notReloaded = true;")
    wait_for(browser, lambda d: accepted(d) == "1", 20, "the job page did not show the new result by itself")
    assert browser.execute_script("return window.__notReloaded === true")
    assert console_errors(browser) == []

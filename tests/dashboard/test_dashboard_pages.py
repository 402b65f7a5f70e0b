"""Dashboard pages over a seeded fleet history, through the real app (no browser, fast).

Uses the benchmark's own seeding (``bench/dashboard_pages.py``) at a small size, so the
benchmark is exercised too, and checks that what each page shows matches the database.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    import dashboard_pages

    from coordinator.app import create_app

    app = create_app({"INSTANCE_PATH": str(tmp_path_factory.mktemp("dashboard-pages")), "BACKGROUND": False,
                      "ADMIN_TOKEN": "fake-admin-token-for-pages"})
    sizes = dashboard_pages.seed(app.extensions["pockettune"].db, devices=40, rounds=6, per_round=10)
    yield app, sizes
    app.extensions["pockettune"].db.engine.dispose()


def _rows(html: str, marker: str) -> int:
    return len(re.findall(marker, html))


def test_pages_show_what_the_database_holds(seeded):
    app, sizes = seeded
    client = app.test_client()
    fleet = client.get("/devices").get_data(as_text=True)
    assert _rows(fleet, r"<tr data-device-id=") == sizes["devices"] == 40
    job = client.get("/jobs/1").get_data(as_text=True)
    assert _rows(job, r'<tr data-round="') == 6
    assert 'id="chart-metric-round"' in job and 'class="chart"' in job
    with app.extensions["pockettune"].db.read() as session:
        from sqlalchemy import func, select

        from coordinator.models import Rejection, Round

        rejected = session.scalar(select(func.count(Rejection.id)).join(Round, Rejection.round_id == Round.id)
                                  .where(Round.job_id == 1, Round.number == 3))
    round_page = client.get("/jobs/1/rounds/3").get_data(as_text=True)
    assert _rows(round_page, r'<tr class="rejection"') == rejected
    assert client.get("/jobs/1/rounds/99").status_code == 404
    assert client.get("/jobs/999").status_code == 404
    assert "text/html" in client.get("/jobs/999").content_type


def test_the_benchmark_runs_and_reports_every_page(tmp_path, capsys):
    import json

    import dashboard_pages

    out = tmp_path / "pages.json"
    dashboard_pages.main(["--devices", "30", "--rounds", "4", "--per-round", "10", "--repeat", "2",
                          "--json", str(out)])
    report = json.loads(out.read_text())
    assert {"overview", "fleet", "jobs", "round", "open round"} <= set(report["pages"])
    assert all(page["median_ms"] > 0 for page in report["pages"].values())
    assert "slowest page median" in capsys.readouterr().out


def test_admin_forms_need_login_and_a_csrf_token(seeded):
    app, _ = seeded
    client = app.test_client()
    assert client.get("/jobs/new").status_code == 302
    refused = client.post("/jobs/2/pause")
    assert refused.status_code == 302 and "/login" in refused.headers["Location"]
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    assert client.post("/login", data={"token": "fake-admin-token-for-pages", "next": "//evil.example/"}
                       ).headers["Location"] == "/"
    assert client.post("/jobs/2/pause", data={"csrf_token": "forged"}).status_code == 400
    page = client.get("/jobs/2").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/jobs/2/pause", data={"csrf_token": token}).status_code == 302
    assert 'id="resume-job"' in client.get("/jobs/2").get_data(as_text=True)
    # A bad job form is shown again with the API's own message, and creates nothing.
    bad = client.post("/jobs/new", data={"csrf_token": token, "model": "tiny", "task": "bbcnews", "rounds": "x"})
    assert bad.status_code == 422 and "rounds" in bad.get_data(as_text=True)
    bad = client.post("/jobs/new", data={"csrf_token": token, "model": "tiny", "task": "bbcnews", "rounds": "2",
                                         "tier": '{"lora_rank": "big"}'})
    assert bad.status_code == 422
    assert _rows(client.get("/jobs").get_data(as_text=True), r"<tr data-job-id=") == 2

"""Dashboard routes: read-only pages for everyone (unless ``DASHBOARD_PUBLIC`` is off), admin forms behind login.

- ``/``                         overview: headline counts and the jobs
- ``/devices``                  the fleet
- ``/jobs``, ``/jobs/<id>``      jobs; a job's rounds, charts and devices
- ``/jobs/<id>/rounds/<n>``      one round: tasks, accepted results, rejections with reasons
- ``/split-jobs``, ``/split-jobs/<id>`` split jobs this process holds: step rate, the merged
  batch's label mix, batch sizes per device, what the server sees
- ``/jobs/new`` (admin)          create a job
- ``/jobs/<id>/pause|resume|cancel`` (admin, POST)
- ``/login``, ``/logout``
"""

from __future__ import annotations

import json
from datetime import datetime

from flask import Blueprint, flash, redirect, render_template, request, url_for
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from coordinator.api.common import state
from coordinator.dashboard import charts, forms, login, queries
from coordinator.errors import ApiError
from coordinator.models import JobStatus, utcnow
from coordinator.services import lifecycle
from coordinator.services.jobs import parse_job_spec

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/dashboard-static")


# --- template helpers --------------------------------------------------------------------------

@bp.app_template_filter("ago")
def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = (utcnow() - moment).total_seconds()
    if seconds < 0:
        return "in " + _duration(-seconds)
    return _duration(seconds) + " ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@bp.app_template_filter("duration")
def _duration_filter(seconds: float | None) -> str:
    return _duration(seconds)


@bp.app_template_filter("bytes")
def _bytes(value: float | None) -> str:
    if value is None:
        return ""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return ""


@bp.app_template_filter("pct")
def _pct(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{100 * value:.{digits}f}%"


@bp.app_template_filter("num")
def _num(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 \
        else f"{value:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:.0f}"


@bp.app_template_filter("when")
def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("metric")
def _metric_value(value: float | None, metric: str | None) -> str:
    if value is None:
        return ""
    return _pct(value) if metric == "accuracy" else _num(value)


@bp.app_template_filter("interval")
def _interval_text(interval, metric: str | None) -> str:
    """`` [80.1%, 88.0%]``: a score's 95% interval, shown beside it (empty when there is none)."""
    if not interval:
        return ""
    return f" [{_metric_value(interval[0], metric)}, {_metric_value(interval[1], metric)}]"


@bp.app_template_global("chart")
def _chart(element_id: str, spec: dict) -> Markup:
    """A chart's container: ``charts.js`` draws the JSON spec inside it (and again on refresh)."""
    # "</" cannot appear in the JSON (it would end the script element early).
    data = json.dumps(spec, allow_nan=False).replace("</", "<\\/")
    return Markup('<div class="chart" id="{0}" data-chart data-live>'
                  '<script type="application/json">{1}</script></div>').format(Markup.escape(element_id),
                                                                                Markup(data))


@bp.app_context_processor
def _globals() -> dict:
    return {"is_admin": login.is_admin(), "csrf_token": login.csrf_token,
            "poll_seconds": state().settings.DASHBOARD_POLL_S, "JobStatus": JobStatus}


def _page(template: str, *, live: bool = False, status: int = 200, **context):
    return render_template(f"dashboard/{template}", live=live, **context), status


def _not_found(message: str):
    return _page("error.html", status=404, title="Not found", message=message)


@bp.errorhandler(ApiError)
def _api_error(error: ApiError):
    return _page("error.html", status=error.status, title=error.code.replace("_", " "), message=error.message)


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException):
    return _page("error.html", status=error.code or 500, title=error.name, message=error.description)


# --- pages -------------------------------------------------------------------------------------

@bp.get("/")
@login.viewer_required
def overview():
    st = state()
    with st.db.read() as session:
        counts = queries.overview_counts(session, st.settings.OFFLINE_AFTER_S)
        jobs = queries.jobs(session)
    return _page("overview.html", live=counts["active_jobs"] > 0, counts=counts, jobs=jobs)


@bp.get("/devices")
@login.viewer_required
def devices():
    st = state()
    with st.db.read() as session:
        rows = queries.fleet(session, st.settings.OFFLINE_AFTER_S)
    return _page("devices.html", live=True, devices=rows, offline_after_s=st.settings.OFFLINE_AFTER_S)


@bp.get("/jobs")
@login.viewer_required
def jobs():
    with state().db.read() as session:
        rows = queries.jobs(session)
    return _page("jobs.html", live=any(j.status in queries.ACTIVE_JOB_STATUSES for j in rows), jobs=rows)


@bp.get("/jobs/<id:job_id>")
@login.viewer_required
def job(job_id: int):
    with state().db.read() as session:
        detail = queries.job_detail(session, job_id)
    if detail is None:
        return _not_found(f"There is no job {job_id}.")
    return _page("job.html", live=detail.active, detail=detail, job=detail.job, charts=charts.job_charts(detail))


@bp.get("/jobs/<id:job_id>/rounds/<id:number>")
@login.viewer_required
def round_(job_id: int, number: int):
    with state().db.read() as session:
        detail = queries.round_detail(session, job_id, number)
    if detail is None:
        return _not_found(f"Job {job_id} has no round {number}.")
    return _page("round.html", live=detail.active, detail=detail, job=detail.job, round=detail.round)


@bp.get("/split-jobs")
@login.viewer_required
def split_jobs():
    jobs = state().split_jobs.all()
    return _page("split_jobs.html", live=any(j.status in ("preparing", "running") for j in jobs), jobs=jobs)


@bp.get("/split-jobs/<id:job_id>")
@login.viewer_required
def split_job(job_id: int):
    job = state().split_jobs.get(job_id)
    session = job.session
    history = list(session.history) if session is not None else []
    rate = None
    if len(history) > 1 and history[-1].closed_at > history[0].opened_at:
        rate = len(history) / (history[-1].closed_at - history[0].opened_at)
    return _page("split_job.html", live=job.status in ("preparing", "running") and not (session and session.done),
                 job=job, progress=session.summary() if session is not None else None, history=history[-20:],
                 step_rate=rate, charts=charts.split_charts(history) if history else {})


# --- login -------------------------------------------------------------------------------------

@bp.route("/login", methods=["GET", "POST"], endpoint="login")
def login_page():
    target = login.safe_next(request.values.get("next"))
    if request.method == "POST":
        if login.log_in(request.form.get("token", "")):
            flash("Logged in as admin.", "ok")
            return redirect(target)
        flash("That is not the admin token (POCKETTUNE_ADMIN_TOKEN, or the admin_token file in the "
              "coordinator's instance folder).", "error")
        return _page("login.html", status=401, next=target)
    return _page("login.html", next=target)


@bp.post("/logout")
def logout():
    login.check_csrf()
    login.log_out()
    flash("Logged out.", "ok")
    return redirect(url_for("dashboard.overview"))


# --- admin actions -----------------------------------------------------------------------------

@bp.route("/jobs/new", methods=["GET", "POST"])
@login.admin_required
def new_job():
    values = {name: default for name, _, _, default in forms.FIELDS}
    if request.method == "POST":
        values = {name: request.form.get(name, "") for name, _, _, _ in forms.FIELDS}
        st = state()
        try:
            spec = parse_job_spec(forms.job_body(request.form), st.settings.MAX_UPDATE_NORM)
        except ApiError as error:
            return _page("new_job.html", status=422, fields=forms.FIELDS, values=values, error=error.message)
        job_id = lifecycle.create_job(st, spec)
        flash(f"Job {job_id} created; its artifact is being prepared.", "ok")
        return redirect(url_for("dashboard.job", job_id=job_id))
    return _page("new_job.html", fields=forms.FIELDS, values=values, error=None)


def _job_action(job_id: int, action, done: str):
    try:
        action(state(), job_id)
        flash(f"Job {job_id} {done}.", "ok")
    except ApiError as error:
        if error.code == "not_found":
            return _not_found(error.message)
        flash(error.message, "error")
    return redirect(url_for("dashboard.job", job_id=job_id))


@bp.post("/jobs/<id:job_id>/pause")
@login.admin_required
def pause_job(job_id: int):
    return _job_action(job_id, lifecycle.pause_job, "paused")


@bp.post("/jobs/<id:job_id>/resume")
@login.admin_required
def resume_job(job_id: int):
    return _job_action(job_id, lifecycle.resume_job, "resumed")


@bp.post("/jobs/<id:job_id>/cancel")
@login.admin_required
def cancel_job(job_id: int):
    return _job_action(job_id, lifecycle.cancel_job, "cancelled")

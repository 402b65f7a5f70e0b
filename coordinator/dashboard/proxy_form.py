"""The dashboard's "try prompts" page: a job's latest adapter steering a large model.

``GET /jobs/<id>/generate`` shows the form; ``POST`` turns its fields into the JSON body of
``POST /api/v1/jobs/<id>/generate`` and goes through the same parsing and the same
:class:`coordinator.services.proxy_generation.ProxyGenerator`, so the page and the API can
never accept different requests or answer differently. Admin only (it runs models on the
coordinator's CPU), with the dashboard's CSRF check on the form.
"""

from __future__ import annotations

from flask import request
from sqlalchemy import select

from coordinator.api.common import state
from coordinator.dashboard import login
from coordinator.dashboard.forms import fields_body
from coordinator.dashboard.views import _not_found, _page, bp
from coordinator.errors import ApiError
from coordinator.models import GlobalAdapter, Job
from coordinator.services.proxy_generation import generator_of, parse_generate_request

#: (field, kind, label, default shown in the form)
FIELDS = (
    ("alpha", "float", "Alpha (0 = the large model alone)", "1.0"),
    ("max_new_tokens", "int", "New tokens (1-256)", "48"),
    ("temperature", "float", "Temperature (0 = greedy)", "0"),
    ("top_p", "float", "Top-p", "1.0"),
    ("seed", "int", "Seed", "0"),
    ("round", "int", "Round (empty = latest)", ""),
    ("large", "text", "Large model (empty = the job's base model)", ""),
)


def generate_body(form) -> dict:
    """The API's JSON body from the submitted form (422 ``invalid_field`` naming a bad field)."""
    return {"prompt": form.get("prompt", ""), "compare": form.get("compare") == "on", **fields_body(form, FIELDS)}


@bp.route("/jobs/<id:job_id>/generate", methods=["GET", "POST"])
@login.admin_required
def generate(job_id: int):
    with state().db.read() as session:
        job = session.get(Job, job_id)
        if job is None:
            return _not_found(f"There is no job {job_id}.")
        latest = session.scalars(select(GlobalAdapter.round).where(GlobalAdapter.job_id == job_id)
                                 .order_by(GlobalAdapter.round.desc()).limit(1)).first()
    values = {name: default for name, _, _, default in FIELDS}
    values.update(prompt="", compare=True)
    context = dict(job=job, latest_round=latest, fields=FIELDS, values=values, result=None, error=None)
    if request.method == "POST":
        values.update({name: request.form.get(name, "") for name, _, _, _ in FIELDS})
        values.update(prompt=request.form.get("prompt", ""), compare=request.form.get("compare") == "on")
        try:
            context["result"] = generator_of(state()).generate(job_id, parse_generate_request(generate_body(request.form)))
        except ApiError as error:
            context["error"] = error.message
            return _page("generate.html", status=error.status, **context)
    return _page("generate.html", **context)

"""Proxy-tuned generation (admin): ``POST /jobs/<id>/generate``.

Continues a prompt with a large model steered by the job's global adapter (federated
proxy-tuning, ``models/proxy.py``); the work is in
:mod:`coordinator.services.proxy_generation`, shared with the dashboard's form.
"""

from __future__ import annotations

from flask import Blueprint

from coordinator.api.common import json_body, state
from coordinator.auth import admin_required
from coordinator.services.proxy_generation import generator_of, parse_generate_request

bp = Blueprint("generate", __name__)


@bp.post("/jobs/<id:job_id>/generate")
@admin_required
def generate(job_id: int):
    """``{prompt, alpha?, max_new_tokens?, temperature?, top_p?, seed?, round?, large?, compare?}``
    -> the proxy-tuned completion with the round and models used (422 on a bad field, 404 for an
    unknown job or one with no adapter yet, 503 while another generation runs too long)."""
    request = parse_generate_request(json_body())
    return generator_of(state()).generate(job_id, request)

"""The dashboard's new-job form: HTML form fields to the JSON job spec, then the API's validation.

The form is a convenience over ``POST /api/v1/jobs``: every field is converted to the JSON
type the API expects (empty fields are left out, so the API's defaults apply) and the result
goes through the very same ``parse_job_spec``, so the two can never accept different jobs.
"""

from __future__ import annotations

import json

from coordinator.errors import ApiError

#: (field, kind, label, default shown in the form)
FIELDS = (
    ("name", "text", "Name", ""),
    ("model", "text", "Base model (preset or directory)", "tiny"),
    ("task", "text", "Task (dataset)", "bbcnews"),
    ("rounds", "int", "Rounds", "3"),
    ("devices_per_round", "int", "Devices per round", "2"),
    ("min_updates", "int", "Results that close a round", ""),
    ("round_deadline_s", "float", "Round deadline (s)", "600"),
    ("local_steps", "int", "Local steps", ""),
    ("lr", "float", "Learning rate", ""),
    ("strategy", "text", "Aggregation strategy", "fedavg"),
    ("configurator", "text", "Configurator", "uniform"),
    ("eval_examples", "int", "Held-out examples evaluated", ""),
    ("eval_every", "int", "Score every k-th round", ""),
    ("tier", "json", "Tier (JSON)", '{"lora_rank": 4, "lora_layers": 2, "batch": 2, "seq": 32}'),
    ("configurator_options", "json", "Configurator options (JSON)", ""),
)


def job_body(form) -> dict:
    """The JSON body for ``parse_job_spec`` from submitted form fields (422 naming a bad field)."""
    return fields_body(form, FIELDS)


def fields_body(form, fields) -> dict:
    """A JSON body from the non-empty ``(name, kind, label, default)`` fields of a submitted form.

    ``kind`` is int, float, json or text; a value that does not parse is a 422 naming the
    field, as the API would answer.
    """
    body = {}
    for name, kind, label, _ in fields:
        raw = (form.get(name) or "").strip()
        if not raw:
            continue
        try:
            if kind == "int":
                body[name] = int(raw)
            elif kind == "float":
                body[name] = float(raw)
            elif kind == "json":
                body[name] = json.loads(raw)
            else:
                body[name] = raw
        except ValueError:
            wanted = {"int": "a whole number", "float": "a number", "json": "valid JSON"}[kind]
            raise ApiError("invalid_field", f"{name}: {label} must be {wanted}, got {raw!r}") from None
    return body

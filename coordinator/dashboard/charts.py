"""Chart specs for ``static/charts.js`` built from the dashboard's query results.

A spec is plain JSON (series of ``[x, y]`` points plus labels), embedded in the page and
re-read on every live refresh; ``charts.js`` draws it as SVG. Keeping the specs here, in
Python, means the numbers a chart shows are the same ones the page's tables show.
"""

from __future__ import annotations

import math

from coordinator.dashboard.queries import JobDetail

#: Per-device charts list at most this many devices (the table below them lists all).
MAX_DEVICES_CHARTED = 60


def _epoch(moment) -> float | None:
    return None if moment is None else moment.timestamp()


def _metric_format(metric: str | None) -> str:
    return "percent" if metric == "accuracy" else "number"


def metric_by_round(detail: JobDetail) -> dict:
    metric = detail.metric or "metric"
    points = []
    if detail.initial_evaluation is not None and detail.initial_evaluation.value is not None:
        points.append([0, detail.initial_evaluation.value])
    points += [[r.number, r.eval_value] for r in detail.rounds if r.eval_value is not None]
    return {"title": f"Held-out {metric} by round", "xLabel": "round", "yLabel": metric,
            "yFormat": _metric_format(detail.metric), "series": [{"name": f"global adapter {metric}",
                                                                  "points": points}]}


def metric_by_time(detail: JobDetail) -> dict:
    """The same scores against wall-clock: round 0 when round 1 opened, round N when N closed."""
    metric = detail.metric or "metric"
    points = []
    first = detail.rounds[0].opened_at if detail.rounds else None
    if first is not None and detail.initial_evaluation is not None and detail.initial_evaluation.value is not None:
        points.append([_epoch(first), detail.initial_evaluation.value])
    points += [[_epoch(r.closed_at), r.eval_value] for r in detail.rounds
               if r.eval_value is not None and r.closed_at is not None]
    return {"title": f"Held-out {metric} by wall-clock", "xLabel": "time (round closed)", "yLabel": metric,
            "xType": "time", "yFormat": _metric_format(detail.metric),
            "series": [{"name": f"global adapter {metric}", "points": points}]}


def loss_by_round(detail: JobDetail) -> dict:
    held_out = []
    if detail.initial_evaluation is not None and detail.initial_evaluation.loss is not None:
        held_out.append([0, detail.initial_evaluation.loss])
    held_out += [[r.number, r.eval_loss] for r in detail.rounds if r.eval_loss is not None]
    return {"title": "Loss by round", "xLabel": "round", "yLabel": "loss", "series": [
        {"name": "held-out loss", "points": held_out},
        {"name": "device loss before training", "points": [[r.number, r.mean_loss_before] for r in detail.rounds
                                                           if r.mean_loss_before is not None]},
        {"name": "device loss after training", "points": [[r.number, r.mean_loss_after] for r in detail.rounds
                                                          if r.mean_loss_after is not None]},
    ]}


def bytes_by_round(detail: JobDetail) -> dict:
    done = [r for r in detail.rounds if r.accepted]
    return {"title": "Bytes moved per round (accepted results)", "kind": "bar", "xLabel": "round",
            "yLabel": "bytes", "yFormat": "bytes", "yMin": 0, "series": [
                {"name": "down (artifacts + adapters)", "points": [[str(r.number), r.bytes_down] for r in done]},
                {"name": "up (updates)", "points": [[str(r.number), r.bytes_up] for r in done]}]}


def device_step_seconds(detail: JobDetail) -> dict:
    devices = [d for d in detail.devices if d.mean_step_seconds is not None][:MAX_DEVICES_CHARTED]
    return {"title": "Mean training step time per device", "kind": "bar", "xLabel": "device",
            "yLabel": "seconds per step", "yFormat": "seconds", "yMin": 0,
            "series": [{"name": "step time", "points": [[d.name, d.mean_step_seconds] for d in devices]}]}


def device_flop_utilization(detail: JobDetail) -> dict:
    devices = [d for d in detail.devices if d.mean_flop_utilization is not None][:MAX_DEVICES_CHARTED]
    return {"title": "FLOP utilization per device (achieved / measured peak)", "kind": "bar", "xLabel": "device",
            "yLabel": "utilization", "yFormat": "percent", "yMin": 0,
            "series": [{"name": "FLOP utilization", "points": [[d.name, d.mean_flop_utilization]
                                                               for d in devices]}]}


def job_charts(detail: JobDetail) -> dict[str, dict]:
    """Every chart of a job page, by element id."""
    return {"chart-metric-round": metric_by_round(detail), "chart-metric-time": metric_by_time(detail),
            "chart-loss": loss_by_round(detail), "chart-bytes": bytes_by_round(detail),
            "chart-step": device_step_seconds(detail), "chart-flops": device_flop_utilization(detail)}


# --- split jobs (coordinator/split): from the running session's step history ---------------------

def split_charts(history, max_devices: int = MAX_DEVICES_CHARTED) -> dict[str, dict]:
    """A split job's charts: the top's loss and the idle time per step, and each device's batch
    size per step (0: it sat the step out; what batch-size regulation chose)."""
    loss = [[r.number, r.loss] for r in history if math.isfinite(r.loss)]   # NaN: a step the top skipped
    idle = [[r.number, r.idle_seconds] for r in history]
    devices = sorted({name for r in history for name in r.planned})[:max_devices]
    sizes = [{"name": f"device {name}", "points": [[r.number, r.planned.get(name, 0)] for r in history]}
             for name in devices]
    return {
        "chart-split-loss": {"title": "Top loss by step", "xLabel": "step", "yLabel": "loss", "yFormat": "number",
                             "series": [{"name": "merged-batch loss", "points": loss}]},
        "chart-split-idle": {"title": "Idle time by step (expected by the plan)", "xLabel": "step",
                             "yLabel": "seconds", "yFormat": "number",
                             "series": [{"name": "devices' wait for the slowest", "points": idle}]},
        "chart-split-batches": {"title": "Batch size per device by step", "xLabel": "step", "yLabel": "examples",
                                "yFormat": "number", "series": sizes},
    }

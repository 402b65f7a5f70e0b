"""The JSON bodies the API returns, built in one place so that every endpoint agrees.

URLs are paths relative to the coordinator's base URL (``/api/v1/blobs/<sha256>``): they stay
right behind a reverse proxy, and clients join them with the base URL they already use.
Timestamps are ISO 8601 in UTC with a ``Z``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import url_for

from coordinator.models import (Artifact, ArtifactFile, Device, Evaluation, GlobalAdapter, Job, Round, Task, Update,
                                utcnow)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def blob_url(sha256: str) -> str:
    return url_for("blobs.get_blob", sha256=sha256)


def blob_ref(sha256: str, size: int, **extra) -> dict:
    return {**extra, "sha256": sha256, "size": size, "url": blob_url(sha256)}


def device_payload(device: Device, offline_after_s: float) -> dict:
    return {
        "device_id": device.id,
        "name": device.name,
        "platform": device.platform,
        "capabilities": device.capabilities,
        "battery": device.battery,
        "charging": device.charging,
        "registered_at": iso(device.registered_at),
        "last_seen": iso(device.last_seen_at),
        "online": is_online(device, offline_after_s),
        "disabled_at": iso(device.disabled_at),
    }


def is_online(device: Device, offline_after_s: float) -> bool:
    return utcnow() - device.last_seen_at <= timedelta(seconds=offline_after_s)


def adapter_payload(job_id: int, adapter: GlobalAdapter) -> dict:
    return {
        "round": adapter.round,
        "num_updates": adapter.num_updates,
        "num_examples": adapter.num_examples,
        "num_clipped": adapter.num_clipped,
        "strategy": adapter.strategy,
        "epsilon": adapter.epsilon,
        "ptd": blob_ref(adapter.ptd_sha256, adapter.ptd_size),
        "peft_zip_url": url_for("jobs.get_adapter", job_id=job_id, round=adapter.round),
    }


def privacy_payload(job: Job, adapters: list[GlobalAdapter]) -> dict | None:
    """A DP job's settings, the epsilon spent so far (at its delta) and whether its budget allows
    another round; None for a job without privacy settings."""
    from coordinator.privacy.accountant import epsilon_after
    from coordinator.privacy.settings import PrivacySettings

    settings = PrivacySettings.from_dict(job.privacy)
    if settings is None:
        return None
    released = sum(1 for a in adapters if a.round >= 1 and a.num_updates > 0)
    spent = epsilon_after(released, settings)
    budget = settings.epsilon_budget
    return {**settings.to_dict(), "released_rounds": released, "epsilon_spent": spent,
            "budget_exhausted": budget is not None and epsilon_after(released + 1, settings) > budget}


def evaluation_payload(evaluation: Evaluation | None) -> dict | None:
    """A global adapter's held-out score; None until it is evaluated (or if evaluation is off)."""
    if evaluation is None:
        return None
    return {
        "metric": evaluation.metric,
        "value": evaluation.value,
        "ci95": None if evaluation.ci_low is None else [evaluation.ci_low, evaluation.ci_high],
        "loss": evaluation.loss,
        "num_examples": evaluation.num_examples,
        "seconds": evaluation.seconds,
        "error": evaluation.error,
    }


def round_payload(round_: Round, adapter: GlobalAdapter | None, evaluation: Evaluation | None = None) -> dict:
    return {
        "round": round_.number,
        "status": round_.status,
        "opened_at": iso(round_.opened_at),
        "deadline": iso(round_.deadline_at),
        "closed_at": iso(round_.closed_at),
        "close_reason": round_.close_reason,
        "num_updates": round_.num_updates,
        "error": round_.error,
        "adapter": None if adapter is None else adapter_payload(round_.job_id, adapter),
        "evaluation": evaluation_payload(evaluation),
    }


def update_payload(update: Update) -> dict:
    """An accepted result as the admin sees it (the update's bytes: the blob ``url``, admin only)."""
    return {
        "update_id": update.id,
        **blob_ref(update.sha256, update.size),
        "num_examples": update.num_examples,
        "loss_before": update.loss_before,
        "loss_after": update.loss_after,
        "train_seconds": update.train_seconds,
        "bytes_downloaded": update.bytes_downloaded,
        "bytes_uploaded": update.bytes_uploaded,
        "delta_norm": update.delta_norm,
        "wire_bytes": update.wire_bytes,
        "effective_rank": update.effective_rank,
        "received_at": iso(update.received_at),
        "metrics": update.metrics,
    }


def round_detail_payload(round_: Round, adapter: GlobalAdapter | None, evaluation: Evaluation | None,
                         tasks: list[Task], updates: list[Update], devices: dict[int, Device]) -> dict:
    """``GET /jobs/<id>/rounds/<n>``: the round, and each device's task and result in it."""
    by_task = {u.task_id: u for u in updates}
    return {
        "job_id": round_.job_id,
        **round_payload(round_, adapter, evaluation),
        "tasks": [{
            "task_id": task.id,
            "device_id": task.device_id,
            "device_name": devices[task.device_id].name,
            "status": task.status,
            "assigned_at": iso(task.assigned_at),
            "submitted_at": iso(task.submitted_at),
            "arm": task.arm,
            "tier": task.tier,
            "local_steps": task.local_steps,
            "update": update_payload(by_task[task.id]) if task.id in by_task else None,
        } for task in sorted(tasks, key=lambda t: t.id)],
    }


def job_payload(job: Job, artifact: Artifact | None, rounds: list[Round], adapters: list[GlobalAdapter],
                evaluations: list[Evaluation] = (), pruning_sources: list[dict] = ()) -> dict:
    by_round = {a.round: a for a in adapters}
    evaluated = {e.round: e for e in evaluations}
    open_rounds = [r.number for r in rounds if r.status in ("open", "aggregating")]
    latest = max(by_round) if by_round else None
    return {
        "job_id": job.id,
        "name": job.name,
        "status": job.status,
        "error": job.error,
        "model": job.model,
        "task": job.task,
        "tier": job.tier,
        "rounds": job.rounds,
        "devices_per_round": job.devices_per_round,
        "min_updates": job.min_updates,
        "round_deadline_s": job.round_deadline_s,
        "local_steps": job.local_steps,
        "lr": job.lr,
        "strategy": job.strategy,
        "configurator": job.configurator,
        "configurator_options": job.configurator_options or {},
        "prepare_tiers": job.prepare_tiers,
        "max_update_norm": job.max_update_norm,
        "norm_clip_factor": job.norm_clip_factor,
        "min_ram_mb": job.min_ram_mb,
        "eval_examples": job.eval_examples,
        "eval_every": job.eval_every,
        "privacy": privacy_payload(job, adapters),
        "update_encoding": job.update_encoding or {"name": "fp32"},
        "pruning_sources": list(pruning_sources),
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "current_round": open_rounds[-1] if open_rounds else None,
        "artifact": None if artifact is None else blob_ref(artifact.manifest_sha256, artifact.manifest_size,
                                                           format=artifact.format),
        "initial_adapter": None if 0 not in by_round else adapter_payload(job.id, by_round[0]),
        "initial_evaluation": evaluation_payload(evaluated.get(0)),
        "latest_adapter_round": latest,
        "round_history": [round_payload(r, by_round.get(r.number), evaluated.get(r.number))
                          for r in sorted(rounds, key=lambda r: r.number)],
    }


def task_payload(task: Task, round_: Round, job: Job, artifact: Artifact, files: list[ArtifactFile],
                 start_round: int, adapter: tuple[str, int, str], train: dict, max_update_bytes: int,
                 max_num_examples: int, max_update_norm: float) -> dict:
    """A device's task: its artifact, its start adapter (cut to its tier), how to train, where to upload.

    ``adapter`` is (sha256, size, format): ``ptd`` for ExecuTorch artifacts, ``safetensors``
    (PEFT keys) for ONNX Runtime ones. The result's meta must name that adapter
    (``start_adapter_sha256``) and claim at most ``max_num_examples`` examples (steps x batch).
    """
    device_files = sorted((f for f in files if f.device), key=lambda f: f.path)
    return {
        "task_id": task.id,
        "job_id": job.id,
        "round": round_.number,
        "dataset": job.task,
        "artifact": {
            **blob_ref(artifact.manifest_sha256, artifact.manifest_size, format=artifact.format),
            "files": [blob_ref(f.sha256, f.size, path=f.path) for f in device_files],
        },
        "adapter": blob_ref(adapter[0], adapter[1], round=start_round, format=adapter[2]),
        "arm": task.arm,
        "train": train,
        "upload": {
            "url": url_for("tasks.post_result", task_id=task.id),
            "format": "safetensors",
            "max_bytes": max_update_bytes,
            "max_update_norm": max_update_norm,
            "max_num_examples": max_num_examples,
            # how to send it (models/update_codecs); absent: the trained fp32 values
            **({"encoding": job.update_encoding} if job.update_encoding else {}),
        },
        "deadline": iso(round_.deadline_at),
    }

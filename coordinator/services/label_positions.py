"""Does a job's task fit its tier's label-position head (``tier.loss_positions``)?

A training program compiled with ``loss_positions`` K runs the LM head on the first K labelled
positions of each row only. It cannot notice a row with more, so every trainer (the Python
runtimes, eager verification, the Android client) refuses such a batch before a step. A job
pairing a K-tier with a task whose examples carry more labels would therefore have every device
refuse every task: the job is refused at creation instead (a 422 from :func:`check_task_fits`,
called by ``parse_job_spec``, which both ``POST /api/v1/jobs`` and the dashboard's form use).

Every tier a configurator hands out is derived from the job's (reference) tier by
``sub_tier``/``normalized_tier``, which keep ``loss_positions``: checking the job's tier checks
them all, without the model shape that listing them (``candidate_tiers``) would need.

The task states its bound (``models.tasks.Task.max_labelled_positions``: a classifier's label
words tokenized, or ``None`` for free text), so the check tokenizes a few words, never the
dataset. It needs the job's model's tokenizer (never its weights); bounds are cached per
(task, model, seq) and tokenizers per model, so a coordinator loads each tokenizer once.
"""

from __future__ import annotations

import functools
from pathlib import Path

from coordinator.errors import ApiError

FIELD = "tier.loss_positions"


def check_task_fits(task: str, model: str, seq: int, loss_positions: int | None) -> None:
    """422 ``invalid_field`` unless every example of ``task`` has at most ``loss_positions``
    labelled positions under ``model``'s tokenizer at ``seq`` (``None``: nothing to check)."""
    if loss_positions is None:
        return
    try:
        needed = task_label_positions(task, model, seq)
    except Exception as exc:  # noqa: BLE001 - whatever stops the count (mostly a tokenizer that does not load)
        why = " ".join(f"{type(exc).__name__}: {exc}".split())   # one line: transformers' errors span several
        raise ApiError("invalid_field", f"{FIELD}: cannot count the label tokens of task {task!r} under the "
                                        f"tokenizer of model {model!r} ({why}); leave loss_positions out or "
                                        "fix the model") from None
    if needed is None:
        # Free text may label every position a row has (seq - 1 of them: nothing predicts position 0).
        if loss_positions < seq - 1:
            raise ApiError("invalid_field", (
                f"{FIELD}: {loss_positions} is smaller than the up to {seq - 1} labelled positions per row of "
                f"task {task!r} (free-text targets at seq {seq}); devices would refuse every batch: leave "
                "loss_positions out (it is for tasks with short fixed targets, such as bbcnews)"))
        return
    if loss_positions < needed:
        raise ApiError("invalid_field", (
            f"{FIELD}: {loss_positions} is smaller than the {needed} label tokens of the examples of task "
            f"{task!r} under the tokenizer of model {model!r} (seq {seq}); devices would refuse their batches: "
            f"raise loss_positions to at least {needed} or leave it out"))


@functools.lru_cache(maxsize=64)
def task_label_positions(task: str, model: str, seq: int) -> int | None:
    """``get_task(task).max_labelled_positions`` under ``model``'s tokenizer (cached: the answer
    depends on nothing else, a local model directory being read once per process; failures are
    not cached, so a model fixed after a refusal is seen at the next job)."""
    from models.tasks import Task, get_task

    found = get_task(task)
    if found.targets is None and type(found).max_labelled_positions is Task.max_labelled_positions:
        return None   # free text under the default rule: no tokenizer to load to know that
    return found.max_labelled_positions(model_tokenizer(model), seq)


@functools.lru_cache(maxsize=8)
def model_tokenizer(model: str):
    """The tokenizer ``models.registry.load_base_model(model)`` would give, without its weights.

    Loading a base model to read five words' token counts would cost its whole fp32 weights
    (540 MB for SmolLM2-135M) inside a request; the tokenizer alone is a few MB. Names resolve
    as in the registry: ``tiny``, ``smollm2-135m`` (its converted cache, which the job's export
    creates anyway), or a local Hugging Face directory.
    """
    from models.registry import SMOLLM2_135M, TINY, build_byte_tokenizer, smollm2_dir

    if model == TINY:
        return build_byte_tokenizer()
    from transformers import AutoTokenizer

    path = smollm2_dir() if model == SMOLLM2_135M else Path(model)
    return AutoTokenizer.from_pretrained(str(path))

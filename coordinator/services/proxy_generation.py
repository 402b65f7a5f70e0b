"""Trying prompts against a job's latest global adapter, with a large model proxy-tuned by it.

The small model S is the job's own artifact model (its reference tier: pruned, quantized,
with LoRA), rebuilt as the evaluator rebuilds it (:func:`export.server_model.load_artifact_model`),
with the requested round's global adapter loaded; S_base is the same model with its
adapters switched off. The large model L is the job's base model unpruned (the model S
was pruned from, so one tokenizer by construction) or another base model named in the
request, checked to share S's tokenizer. See ``models/proxy.py`` for the formula.

Shared by ``POST /api/v1/jobs/<id>/generate`` and the dashboard's form, which both turn
their input into the same request dict and go through :func:`parse_generate_request`, so
the two can never accept different requests.

Generation is CPU work on the coordinator's machine: one request at a time (a lock; a
request that waits longer than ``WAIT_S`` gets 503), and one L and one S kept loaded.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import select

from coordinator import fields
from coordinator.errors import ApiError
from coordinator.models import Artifact, GlobalAdapter, Job
from coordinator.services.heavy_imports import ensure_heavy_imports
from coordinator.services.jobs import MAX_ROUNDS
from coordinator.services.state import PromptGenerator, ServiceState

#: Characters accepted in a prompt before tokenizing (the token limit is checked after).
MAX_PROMPT_CHARS = 8000
#: How long a request waits for another one's generation before it gets 503.
WAIT_S = 120.0
FIELDS = {"prompt", "alpha", "max_new_tokens", "temperature", "top_p", "seed", "round", "large", "compare"}


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    settings: object            # models.proxy.GenerationSettings
    round: int | None           # None: the latest global adapter
    large: str | None           # None: the job's base model
    compare: bool               # also generate with L alone (alpha 0)


#: Outer bounds for the type check; ``GenerationSettings.validate`` applies each setting's own range.
_NUMBER_BOUND = 1e6
_INTEGER_BOUND = 2**63 - 1


def _number(body: dict, name: str, default, integer: bool = False):
    value = body.get(name, default)
    if integer:
        return fields.integer(name, value, -_INTEGER_BOUND, _INTEGER_BOUND)
    return fields.number(name, value, -_NUMBER_BOUND, _NUMBER_BOUND)


def parse_generate_request(body: dict) -> GenerateRequest:
    """A checked request from a JSON object (422 ``invalid_field`` naming what is wrong)."""
    from models.proxy import GenerationSettings, GenerationSettingsError
    from models.registry import is_known_model

    fields.unknown_keys(body, FIELDS, "the request")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError("invalid_field", "prompt must be a non-empty string: the text to continue")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ApiError("invalid_field", f"prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS}: shorten it")
    settings = GenerationSettings(alpha=_number(body, "alpha", 1.0),
                                  max_new_tokens=_number(body, "max_new_tokens", 64, integer=True),
                                  temperature=_number(body, "temperature", 0.0), top_p=_number(body, "top_p", 1.0),
                                  seed=_number(body, "seed", 0, integer=True))
    try:
        settings.validate()
    except GenerationSettingsError as exc:
        raise ApiError("invalid_field", str(exc)) from None
    round_number = body.get("round")
    if round_number is not None:  # 0 is the untrained adapter
        round_number = fields.integer("round", round_number, 0, MAX_ROUNDS)
    large = body.get("large")
    if large is not None and (not isinstance(large, str) or not is_known_model(large)):
        raise ApiError("invalid_field", f"large must name a base model (tiny, smollm2-135m or a model directory "
                                        f"on the coordinator), got {fields.shown(large)}; leave it out to use the "
                                        "job's base model")
    compare = fields.boolean("compare", body.get("compare", False))
    return GenerateRequest(prompt=prompt, settings=settings, round=round_number, large=large, compare=compare)


class ProxyGenerator:
    """Keeps one L and one job's S loaded and generates one request at a time."""

    def __init__(self, state: ServiceState):
        self.state = state
        self._lock = threading.Lock()
        self._large = None        # (name, models.registry.BaseModel)
        self._small = None        # (artifact id, export.server_model.ArtifactModel)
        self._loaded_adapter = None

    def generate(self, job_id: int, request: GenerateRequest) -> dict:
        """Proxy-tuned completion of ``request.prompt`` for job ``job_id`` (ApiError when it cannot)."""
        job, artifact, adapter = self._job_parts(job_id, request.round)
        if not self._lock.acquire(timeout=WAIT_S):
            raise ApiError("unavailable", "another generation is still running on this coordinator; retry shortly")
        try:
            return self._generate(job, artifact, adapter, request)
        finally:
            self._lock.release()

    def _job_parts(self, job_id: int, round_number: int | None):
        with self.state.db.read() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise ApiError("not_found", f"no job {job_id}")
            artifact = session.get(Artifact, job.artifact_id) if job.artifact_id else None
            query = select(GlobalAdapter).where(GlobalAdapter.job_id == job_id)
            if round_number is None:
                adapter = session.scalars(query.order_by(GlobalAdapter.round.desc()).limit(1)).first()
            else:
                adapter = session.scalars(query.where(GlobalAdapter.round == round_number)).one_or_none()
        if artifact is None or adapter is None:
            which = "any round" if round_number is None else f"round {round_number}"
            hint = (" (its artifact is still being prepared: wait until the job is running)"
                    if artifact is None else "")
            raise ApiError("not_found", f"job {job_id} has no global adapter for {which} yet{hint}")
        return job, artifact, adapter

    def _generate(self, job: Job, artifact: Artifact, adapter: GlobalAdapter, request: GenerateRequest) -> dict:
        ensure_heavy_imports()
        import torch

        from models.proxy import GenerationSettingsError, ProxyTunedLM, TokenizerMismatchError

        started = time.perf_counter()
        large_name = request.large or job.model
        try:
            large = self._large_model(large_name)
            small = self._small_model(artifact, adapter)
            proxy = ProxyTunedLM.from_peft(large.model, large.tokenizer, small.peft_model, small.tokenizer,
                                           alpha=request.settings.alpha)
        except TokenizerMismatchError as exc:
            raise ApiError("invalid_field", f"large {large_name!r} cannot steer this job's model: {exc}") from None
        load_seconds = time.perf_counter() - started
        try:
            with torch.inference_mode():
                result = proxy.generate(request.prompt, request.settings)
                baseline = (proxy.generate(request.prompt, _with_alpha(request.settings, 0.0))
                            if request.compare else None)
        except GenerationSettingsError as exc:
            raise ApiError("invalid_field", str(exc)) from None
        pruned = artifact.manifest.get("pruned_model", {})
        body = {"job_id": job.id, "round": adapter.round, "large": large_name,
                "small": {"artifact_key": artifact.key, "prune_ratio": job.tier.get("prune_ratio", 0.0),
                          "prune_method": job.tier.get("prune_method", "width"),
                          "num_hidden_layers": pruned.get("num_hidden_layers"),
                          "num_attention_heads": pruned.get("num_attention_heads"),
                          "intermediate_size": pruned.get("intermediate_size")},
                "prompt": request.prompt, **vars(request.settings), "completion": result.text,
                "token_ids": result.token_ids, "prompt_tokens": result.prompt_tokens,
                "stopped_at_eos": result.stopped_at_eos, "generation_seconds": round(result.seconds, 4),
                "load_seconds": round(load_seconds, 4)}
        if baseline is not None:
            body["large_alone"] = {"completion": baseline.text, "token_ids": baseline.token_ids,
                                   "stopped_at_eos": baseline.stopped_at_eos}
        return body

    def _large_model(self, name: str):
        from models.registry import load_base_model

        if self._large is None or self._large[0] != name:
            self._large = None              # one L in memory at a time
            self._large = (name, load_base_model(name))
        return self._large[1]

    def _small_model(self, artifact: Artifact, adapter: GlobalAdapter):
        from export.server_model import load_artifact_model, set_adapter_tensors

        if self._small is None or self._small[0] != artifact.id:
            self._small, self._loaded_adapter = None, None
            try:
                model = load_artifact_model(self.state.evaluator.artifact_directory(artifact))
            except (FileNotFoundError, ValueError) as exc:
                raise ApiError("unavailable", f"the job's model cannot be rebuilt on this coordinator: {exc}") from None
            self._small = (artifact.id, model)
        model = self._small[1]
        if self._loaded_adapter != adapter.weights_sha256:
            set_adapter_tensors(model.peft_model, self.state.adapters.tensors(adapter.weights_sha256))
            self._loaded_adapter = adapter.weights_sha256
        return model


def _with_alpha(settings, alpha: float):
    from dataclasses import replace

    return replace(settings, alpha=alpha)


def generator_of(state: ServiceState) -> PromptGenerator:
    """The app's :class:`ProxyGenerator` (``CoordinatorState.proxy_generator``), shared by the
    JSON API and the dashboard so that one generation runs at a time per coordinator."""
    return state.proxy_generator

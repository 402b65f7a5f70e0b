"""Scoring each global adapter on the task's held-out split, in the background.

Round 0's adapter (the artifact's initial one: the tier's zero-shot model) is scored when the
job starts running, and round N's when round N closes. :class:`EvaluationWorker` is one
thread reading a queue, like the artifact worker: requests and the round closer only put
``(job, round)`` on it, so an evaluation never delays an upload or the closing of a round,
and never two evaluations run at once (a process-wide lock also covers several apps in one
process, as in tests).

What is scored is exactly the eager model the artifact's program was compiled from
(:func:`export.server_model.load_artifact_model`), loaded once per artifact and kept; each
round only swaps the LoRA tensors in. The examples are the task's held-out split (by default
all of it; ``Task.eval_examples(limit=job.eval_examples)`` for a fixed subset), the same for
every round, so rounds compare; each score comes with its 95% interval over those examples.
``eval_examples`` 0 turns evaluation off for a job. When LoRA sits in the last layers only,
the model is scored through its frozen prefix (:mod:`models.frozen_prefix`): the layers below
the lowest LoRA layer run once per held-out row and artifact, later rounds run only the top
(``EVALUATION_FROZEN_PREFIX``, on by default). The evaluator runs torch on
``EVALUATION_THREADS`` threads (default 1), so that on a small host it leaves the other cores
to the devices it serves.

A score is a pure function of the artifact, the adapter's bytes, the task and the number of
examples, so an adapter already scored under the same four (round 0 of every job on one tier
starts from the same initial adapter: the arms and seeds of a comparison) is not scored again:
its scores are copied into a new row (``seconds`` 0) and the log says whose they are.

Results land in the ``evaluations`` table, one row per ``(job, round)``. A failed evaluation
is recorded too (``error`` set, scores null) and logged: it is reported once, not retried on
every start. When the coordinator starts it queues every global adapter of a running or
completed job that has no row yet (e.g. the process stopped mid-queue). Rounds of a job that
was cancelled or failed by the time its turn comes are skipped.
"""

from __future__ import annotations

import logging
import math
import queue
import shutil
import threading
import time
from pathlib import Path

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError

from coordinator.models import Artifact, ArtifactFile, Evaluation, GlobalAdapter, Job, JobStatus, utcnow
from coordinator.services.artifacts import ADAPTER_PTD, MANIFEST_FILE
from coordinator.services.heavy_imports import ensure_heavy_imports
from coordinator.services.state import ServiceState
from models.eval_schedule import is_evaluated_round

log = logging.getLogger(__name__)

#: Files of an artifact the server-side model does not read (the device's program and adapter).
_NOT_NEEDED_FOR_EVALUATION = ("model.pte", ADAPTER_PTD)
#: Examples lists kept in memory, by (task, limit).
_CACHED_EXAMPLE_SETS = 4
_EVALUATED_STATUSES = (JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.COMPLETED)

#: One evaluation at a time in this process, whichever app's worker runs it.
_EVALUATION_LOCK = threading.Lock()


def missing_evaluations(session) -> list[tuple[int, int]]:
    """``(job_id, round)`` of every global adapter of a running or completed job with
    ``eval_examples`` > 0 that its ``eval_every`` schedules for scoring and that has no
    evaluation row, oldest job and round first."""
    query = (select(GlobalAdapter.job_id, GlobalAdapter.round)
             .join(Job, Job.id == GlobalAdapter.job_id)
             .outerjoin(Evaluation, and_(Evaluation.job_id == GlobalAdapter.job_id,
                                         Evaluation.round == GlobalAdapter.round))
             .where(Job.status.in_(_EVALUATED_STATUSES), Job.eval_examples > 0, Evaluation.id.is_(None),
                    # models.eval_schedule.is_evaluated_round, in SQL
                    or_(GlobalAdapter.round == 0, GlobalAdapter.round == Job.rounds,
                        GlobalAdapter.round % Job.eval_every == 0))
             .order_by(GlobalAdapter.job_id, GlobalAdapter.round))
    return [(job_id, round_number) for job_id, round_number in session.execute(query)]


class EvaluationWorker:
    """The background thread that scores global adapters, one at a time."""

    def __init__(self, state: ServiceState):
        self.state = state
        self._queue: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self._queued: set[tuple[int, int]] = set()
        self._queued_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._model = None            # (artifact id, export.server_model.ArtifactModel)
        self._prefix = None           # (artifact id, FrozenPrefixModel or None)
        self._examples: dict[tuple[str, int], list] = {}

    # --- queue ---------------------------------------------------------------------------------

    def start(self) -> None:
        with self.state.db.read() as session:
            pending = missing_evaluations(session)
        if pending:
            log.info("evaluations: %d global adapter(s) not yet evaluated, queued", len(pending))
        for job_id, round_number in pending:
            self.submit(job_id, round_number)
        self._thread = threading.Thread(target=self._run, name="pockettune-evaluations", daemon=True)
        self._thread.start()

    def submit(self, job_id: int, round_number: int) -> None:
        """Queue the evaluation of global adapter ``round_number`` of ``job_id`` (never blocks)."""
        key = (job_id, round_number)
        with self._queued_lock:
            if key in self._queued:
                return
            self._queued.add(key)
        self._queue.put(key)

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while (key := self._queue.get()) is not None:
            with self._queued_lock:
                self._queued.discard(key)
            try:
                self.evaluate(*key)
            except Exception:  # noqa: BLE001 - evaluate records failures itself; never kill the worker
                log.exception("evaluating job %s round %s failed unexpectedly", *key)

    # --- one evaluation ------------------------------------------------------------------------

    def evaluate(self, job_id: int, round_number: int) -> Evaluation | None:
        """Score one global adapter and record the result (or the error); None if not due."""
        db = self.state.db
        with db.read() as session:
            job = session.get(Job, job_id)
            adapter = session.scalars(select(GlobalAdapter).where(
                GlobalAdapter.job_id == job_id, GlobalAdapter.round == round_number)).one_or_none()
            done = session.scalars(select(Evaluation.id).where(
                Evaluation.job_id == job_id, Evaluation.round == round_number)).first()
            artifact = session.get(Artifact, job.artifact_id) if job is not None and job.artifact_id else None
        if (job is None or adapter is None or artifact is None or done is not None or job.eval_examples <= 0
                or job.status not in _EVALUATED_STATUSES
                or not is_evaluated_round(round_number, job.rounds, job.eval_every)):
            return None
        with _EVALUATION_LOCK:
            started = time.perf_counter()
            earlier = self._earlier_score(job, adapter)
            try:
                scores, error = earlier or self._score(job, artifact, adapter), None
            except Exception as exc:  # noqa: BLE001 - any failure is this evaluation's, recorded and reported
                log.exception("job %s round %s: evaluation failed", job_id, round_number)
                scores, error = {}, f"{type(exc).__name__}: {exc}"
            seconds = 0.0 if earlier else time.perf_counter() - started
        interval = scores.get("ci95") or (None, None)
        evaluation = Evaluation(job_id=job_id, round=round_number, metric=scores.get("metric"),
                                value=scores.get("value"), ci_low=interval[0], ci_high=interval[1],
                                loss=scores.get("loss"),
                                num_examples=scores.get("num_examples"), seconds=round(seconds, 4),
                                error=error, created_at=utcnow())
        try:
            with db.write() as session:
                session.add(evaluation)
        except IntegrityError:
            # Another coordinator process on the same database recorded this round first.
            log.info("job %s round %s: already evaluated by another process", job_id, round_number)
            return None
        if error is None:
            log.info("job %s round %s evaluated: %s %.4g, loss %s, %d examples, %.2f s%s", job_id, round_number,
                     evaluation.metric, evaluation.value, evaluation.loss, evaluation.num_examples, seconds,
                     f" (the same adapter's score in job {earlier['job']} round {earlier['round']})" if earlier else "")
        return evaluation

    def _earlier_score(self, job: Job, adapter: GlobalAdapter) -> dict | None:
        """The scores of an earlier successful evaluation of the same adapter bytes on the same
        artifact, task and number of examples (None: there is none), as :meth:`_score` returns them."""
        with self.state.db.read() as session:
            row = session.execute(
                select(Evaluation, GlobalAdapter.job_id, GlobalAdapter.round)
                .join(GlobalAdapter, and_(GlobalAdapter.job_id == Evaluation.job_id,
                                          GlobalAdapter.round == Evaluation.round))
                .join(Job, Job.id == Evaluation.job_id)
                .where(GlobalAdapter.weights_sha256 == adapter.weights_sha256, Job.artifact_id == job.artifact_id,
                       Job.task == job.task, Job.eval_examples == job.eval_examples,
                       Evaluation.error.is_(None), Evaluation.value.is_not(None))
                .order_by(Evaluation.id).limit(1)).first()
        if row is None:
            return None
        earlier, job_id, round_number = row
        ci95 = (earlier.ci_low, earlier.ci_high) if earlier.ci_low is not None else None
        return {"metric": earlier.metric, "value": earlier.value, "ci95": ci95, "loss": earlier.loss,
                "num_examples": earlier.num_examples, "job": job_id, "round": round_number}

    def _score(self, job: Job, artifact: Artifact, adapter: GlobalAdapter) -> dict:
        ensure_heavy_imports()
        import torch

        from export.server_model import set_adapter_tensors
        from models.tasks import get_task

        torch.set_num_threads(self.state.settings.EVALUATION_THREADS)
        model = self._artifact_model(artifact)
        set_adapter_tensors(model.peft_model, self.state.adapters.tensors(adapter.weights_sha256))
        task = get_task(job.task)
        examples = self._eval_examples(task, job.task, job.eval_examples)
        scorer = self._scorer(artifact.id, model) if task.scores_through_decoder else model.peft_model
        with torch.no_grad():
            result = task.evaluate(scorer, model.tokenizer, examples, seq=int(job.tier["seq"]))
        if scorer is not model.peft_model:
            log.info("job %s round %s: frozen prefix of %d held-out rows computed, %d reused", job.id,
                     adapter.round, scorer.stats.computed, scorer.stats.hits)
        return checked_result(result)

    def _scorer(self, artifact_id: int, model):
        """What the task scores: the eager model seen through its frozen prefix when LoRA leaves
        a bottom untouched (:class:`models.frozen_prefix.FrozenPrefixModel`: every round scores
        the same rows, so their bottom is computed once per artifact), else the model itself."""
        if self._prefix is not None and self._prefix[0] == artifact_id:
            return self._prefix[1] or model.peft_model
        import torch

        from models.frozen_prefix import FrozenPrefixModel, first_trained_layer

        scorer = None
        if self.state.settings.EVALUATION_FROZEN_PREFIX and (first_trained_layer(model.peft_model) or 0) > 0:
            try:
                candidate = FrozenPrefixModel(model.peft_model)
                vocab = model.peft_model.get_input_embeddings().weight.shape[0]
                candidate.check(torch.arange(2 * 24).reshape(2, 24) * 7919 % vocab)
                scorer = candidate
            except ValueError as exc:
                log.warning("artifact %s: scoring whole passes: %s", artifact_id, exc)
        self._prefix = (artifact_id, scorer)
        return scorer or model.peft_model

    def _eval_examples(self, task, name: str, limit: int) -> list:
        key = (name, limit)
        if key not in self._examples:
            while len(self._examples) >= _CACHED_EXAMPLE_SETS:
                self._examples.pop(next(iter(self._examples)))
            self._examples[key] = list(task.eval_examples(limit=limit))
        return self._examples[key]

    def _artifact_model(self, artifact: Artifact):
        if self._model is not None and self._model[0] == artifact.id:
            return self._model[1]
        from export.server_model import load_artifact_model

        self._model = None  # one model in memory at a time: drop the old one before loading
        started = time.perf_counter()
        model = load_artifact_model(self._artifact_directory(artifact))
        log.info("evaluations: loaded the eager model of artifact %s in %.1f s", artifact.id,
                 time.perf_counter() - started)
        self._model = (artifact.id, model)
        return model

    def artifact_directory(self, artifact: Artifact) -> Path:
        """The artifact's server-side files on disk (also what proxy generation rebuilds S from)."""
        return self._artifact_directory(artifact)

    def _artifact_directory(self, artifact: Artifact) -> Path:
        """A directory holding the artifact's files: the export cache's, or one rebuilt from blobs."""
        from export.manifest import sha256_file

        cached = self.state.worker.cache.directory(artifact.key)
        if (cached / MANIFEST_FILE).is_file() and sha256_file(cached / MANIFEST_FILE) == artifact.manifest_sha256:
            return cached
        target = Path(self.state.settings.INSTANCE_PATH) / "evaluation" / artifact.key
        if (target / MANIFEST_FILE).is_file() and sha256_file(target / MANIFEST_FILE) == artifact.manifest_sha256:
            return target
        return self._materialize(artifact, target)

    def _materialize(self, artifact: Artifact, target: Path) -> Path:
        """Copy the artifact's server-side files out of the blob store into ``target`` (all or nothing)."""
        from export.pipeline import staged_output_dir

        blobs = self.state.blobs
        with self.state.db.read() as session:
            files = session.scalars(select(ArtifactFile).where(ArtifactFile.artifact_id == artifact.id)).all()
        with staged_output_dir(target, replace=True) as staging:
            for file in files:
                if file.path in _NOT_NEEDED_FOR_EVALUATION:
                    continue
                destination = staging / file.path
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(blobs.path(file.sha256), destination)
            shutil.copyfile(blobs.path(artifact.manifest_sha256), staging / MANIFEST_FILE)
        return target

def checked_result(result) -> dict:
    """A task's evaluation result, checked: metric name, finite value and loss, example count."""
    if not isinstance(result, dict):
        raise TypeError(f"the task's evaluate returned {type(result).__name__}, not a dict")
    metric, value, loss, count = (result.get(k) for k in ("metric", "value", "loss", "num_examples"))
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"the task's evaluate returned no metric name: {result!r}")
    for name, number in (("value", value), ("loss", loss)):
        if number is None and name == "loss":
            continue
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise ValueError(f"the task's evaluate returned a non-finite or missing {name}: {result!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the task's evaluate returned no example count: {result!r}")
    interval = result.get("ci95")
    if interval is not None:
        if (not isinstance(interval, (list, tuple)) or len(interval) != 2
                or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in interval)
                or not interval[0] <= value <= interval[1]):
            raise ValueError(f"the task's evaluate returned a bad ci95 (two finite bounds around the value): "
                             f"{result!r}")
        interval = [float(interval[0]), float(interval[1])]
    return {"metric": metric, "value": float(value), "loss": None if loss is None else float(loss),
            "num_examples": count, "ci95": interval}

"""A device in a split job: joins, then answers the coordinator's ``next`` until the job is done.

The device's half of MergeSFL over real HTTP: it fetches the bottom programs for each batch
size the job compiled (content-addressed blobs, verified), and per step computes its batch's
cut-layer features on the ExecuTorch runtime (:class:`fleet.split_bottom.SplitBottomTrainer`),
sends them with the labels, fetches its gradient slice, backpropagates it and steps SGD. Every
``average_every`` steps it sends its bottom adapter and loads the server's average.

Programs have fixed shapes, so each batch size has its own program and its own runtime
module; the LoRA weights move between them when the planned size changes (they are a
few hundred kilobytes). The device's data is a list of (ids, labels) examples; a step of size
``b`` takes the next ``b`` of them, cycling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fleet.split_bottom import SplitBottomTrainer
from fleet.transport import CoordinatorClient, ProtocolError
from export.split_programs import BOTTOM_ADAPTER_FILE, BOTTOM_PROGRAM_FILE

log = logging.getLogger(__name__)


@dataclass
class SplitWorkerReport:
    """What one device did in a split job (its own counts; the server keeps its own)."""

    steps: int = 0
    examples: int = 0
    averagings: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class SplitWorker:
    """One device (``client``: registered, with its token) in split job ``job_id``, training on
    ``examples`` (each an ``(ids [seq], labels [seq])`` pair); files are kept under ``cache_dir``."""

    def __init__(self, client: CoordinatorClient, job_id: int, examples: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 cache_dir: Path, poll_s: float = 0.05):
        if not examples:
            raise ValueError("a split worker needs at least one example")
        self.client, self.job_id, self.examples = client, job_id, list(examples)
        self.cache_dir, self.poll_s = Path(cache_dir), poll_s
        self.report = SplitWorkerReport()
        self._next_example = 0
        self._trainers: dict[int, SplitBottomTrainer] = {}
        self._active: int | None = None
        self._pending: dict[int, torch.Tensor] = {}       # step -> the ids sent, awaiting the gradient
        self.manifest: dict | None = None

    def _path(self, suffix: str) -> str:
        return f"api/v1/split-jobs/{self.job_id}/{suffix}"

    def join(self) -> dict:
        self.manifest = self.client.json("POST", self._path("join"))["manifest"]
        return self.manifest

    def run(self, until: Callable[[], bool] = lambda: False, max_actions: int | None = None) -> SplitWorkerReport:
        """Answer ``next`` until the job is done (or ``until()``, or ``max_actions`` answers)."""
        if self.manifest is None:
            self.join()
        handled = 0
        while not until() and (max_actions is None or handled < max_actions):
            action = self.client.json("GET", self._path("next"))
            if action["kind"] == "done":
                break
            if action["kind"] == "wait":
                time.sleep(self.poll_s)
                continue
            self.act(action)
            handled += 1
        return self.report

    def act(self, action: dict) -> None:
        """Carry out one action the coordinator asked for."""
        kind = action["kind"]
        if kind == "features":
            self.send_features(action["step"], action["batch_size"])
        elif kind == "gradient":
            self.apply_gradient(action["step"])
        elif kind == "upload_adapter":
            self.upload_adapter(action["averaging"])
        elif kind == "download_adapter":
            self.download_adapter(action["averaging"])
        else:
            raise ValueError(f"the coordinator asked for an unknown action {kind!r}")

    # --- steps ---------------------------------------------------------------------------------------

    def send_features(self, step: int, batch_size: int) -> None:
        self.post_features(step, self.prepare_features(step, batch_size))

    def prepare_features(self, step: int, batch_size: int) -> bytes:
        """Compute step ``step``'s features for the next ``batch_size`` examples: the body to send."""
        trainer = self._trainer(batch_size)
        ids, labels = self._batch(batch_size)
        features = trainer.features(ids)
        self._pending = {step: ids}
        return _safetensors({"features": features, "labels": labels})

    def post_features(self, step: int, body: bytes) -> bool:
        """Send prepared features; False when the step went on without them (too late)."""
        try:
            self.client.request("POST", self._path(f"steps/{step}/features"), data=body,
                                headers={"Content-Type": "application/octet-stream"})
        except ProtocolError as error:
            if error.code in ("step_closed", "no_such_step"):      # too late: the step went on without us
                log.info("step %s closed before our features arrived", step)
                self._pending.pop(step, None)
                return False
            raise
        self.report.bytes_up += len(body)
        return True

    def pending_size(self, step: int) -> int:
        """The batch size of the features sent for ``step`` (awaiting its gradient)."""
        return self._pending[step].size(0)

    def discard_pending(self, step: int) -> None:
        """Forget features prepared for ``step`` and never sent (the step went on without them)."""
        self._pending.pop(step, None)

    def apply_gradient(self, step: int) -> int:
        """Fetch step ``step``'s gradient slice, backpropagate it, step SGD; returns the bytes fetched."""
        response = self.client.request("GET", self._path(f"steps/{step}/gradient"))
        self.report.bytes_down += len(response.content)
        gradient = _tensors(response.content)["gradient"]
        ids = self._pending.pop(step)
        self._trainers[self._active].backward(ids, gradient)
        self.report.steps += 1
        self.report.examples += ids.size(0)
        self.report.batch_sizes.append(ids.size(0))
        return len(response.content)

    # --- averaging -------------------------------------------------------------------------------------

    def upload_adapter(self, number: int) -> None:
        self.post_adapter(number, self.adapter_body())

    def adapter_body(self) -> bytes:
        return _safetensors(self._trainers[self._active].adapter_tensors())

    def post_adapter(self, number: int, body: bytes) -> None:
        self.client.request("POST", self._path(f"averagings/{number}/adapter"), data=body,
                            headers={"Content-Type": "application/octet-stream"})
        self.report.bytes_up += len(body)

    def download_adapter(self, number: int) -> int:
        """Load averaging ``number``'s result; returns the bytes fetched."""
        response = self.client.request("GET", self._path(f"averagings/{number}/adapter"))
        self.report.bytes_down += len(response.content)
        tensors = _tensors(response.content)
        trainer = self._trainer(self._active or min(int(s) for s in self.manifest["programs"]))
        trainer.load_adapter(tensors)
        self.report.averagings += 1
        return len(response.content)

    # --- internals -----------------------------------------------------------------------------------------

    def _batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.examples[(self._next_example + i) % len(self.examples)] for i in range(size)]
        self._next_example = (self._next_example + size) % len(self.examples)
        return torch.stack([ids for ids, _ in rows]), torch.stack([labels for _, labels in rows])

    def prefetch(self) -> int:
        """Download every batch size's programs now (without loading them); returns the bytes
        fetched. A device that fetched its artifacts ahead of time, as the steady clock assumes."""
        fetched = 0
        for size in self.manifest["programs"]:
            fetched += self._download(int(size))
        self.report.bytes_down += fetched
        return fetched

    def _download(self, size: int) -> int:
        """Fetch ``size``'s program (and, once, the start adapter; each size's folder links it)."""
        directory = self.cache_dir / f"b{size}"
        ref = self.manifest["programs"][str(size)]["program"]
        fetched = self.client.download(ref["url"], ref["sha256"], directory / BOTTOM_PROGRAM_FILE)
        adapter = self.manifest["adapter"]
        shared = self.cache_dir / BOTTOM_ADAPTER_FILE
        fetched += self.client.download(adapter["url"], adapter["sha256"], shared)
        link = directory / BOTTOM_ADAPTER_FILE
        if not link.is_symlink() and not link.exists():
            # absolute: a relative target would resolve against the link's folder, not ours
            link.symlink_to(shared.resolve())
        return fetched

    def close(self) -> None:
        """Unload the runtime module (the frozen bottom, embeddings included): a simulation of many
        devices frees each one's program when its run ends."""
        self._trainers.clear()
        self._active = None

    def _trainer(self, size: int) -> SplitBottomTrainer:
        """The runtime module for ``size``, holding the device's current LoRA weights.

        Only one size's programs are loaded at a time (each carries the frozen bottom, the
        embedding table included): switching sizes moves the LoRA weights over and unloads the
        previous module, so a device's memory is one size's, whatever the plan asks."""
        if size not in self._trainers:
            self.report.bytes_down += self._download(size)
            self._trainers[size] = SplitBottomTrainer(self.cache_dir / f"b{size}", self.manifest["lora_inputs"],
                                                      lr=self.manifest["lr"])
        trainer = self._trainers[size]
        if self._active is not None and self._active != size:
            trainer.load_adapter(self._trainers[self._active].adapter_tensors())
            del self._trainers[self._active]
        self._active = size
        return trainer


def _safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def _tensors(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)

"""The virtual clock: what a task costs on a profile's hardware, from counted work only.

A simulated device's virtual time must be a property of the experiment (model, tier, profile,
bytes), not of the machine that happens to run it: when it was the device's *measured* compute
time times its profile's slowdown, the host's load leaked in (the same unpruned tier took 5.50
vs 4.32 s per step on different days), and two runs of one seeded simulation disagreed. So
nothing measured on the host enters virtual time. A task costs

    download  = (1 + files fetched) x 2 x latency_s  +  bytes down x 8 / link
    compute   = (steps run x FLOPs per step + prefix examples computed x FLOPs per example)
                / sustained GFLOP/s of the profile for the program's kind
    upload    = 2 x latency_s  +  bytes up x 8 / link

with FLOPs counted analytically (``fleet/hardware.py``), bytes and files as the device really
moved them (deterministic: the same artifacts, adapters and caches in every run), one round trip
for the task request and one per fetched file, and one for the upload.

The sustained rates are constants: :data:`REFERENCE_SUSTAINED_GFLOPS` is what the reference
device (``flagship``, ``native``: one thread of the calibration machine, the share each of the
simulator's two workers gets on 2 cores) sustains per program kind, measured once by
``python -m fleet.calibrate`` (command, machine and numbers in ``docs/fleet.md``). Another profile
sustains the reference rates over its ``slowdown``. Program kinds differ by runtime, kernels and
frozen-weight precision, because those change the rate several-fold (XNNPACK vs the portable
kernels, int8 weights dequantized in the graph every step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from export.formats import DEFAULT_FORMAT, get_format

#: Program kinds the manifest lets one tell apart: ``<format>[-<kernels>]-<precision>``.
#: ONNX Runtime has no kernel choice (``tier.kernels`` does not apply to it).
PROGRAM_KINDS = ("executorch-xnnpack-fp32", "executorch-xnnpack-int8", "executorch-portable-fp32",
                 "executorch-portable-int8", "onnxruntime-fp32", "onnxruntime-int8")

#: GFLOP/s the reference device sustains in training steps, per program kind: analytical FLOPs
#: of a step of the calibration tier (SmolLM2-135M, LoRA r8 on q/v of the last 4 layers, B4
#: S64, 92.13 GFLOP per step) over its median measured step time, one thread, ``python -m
#: fleet.calibrate`` on the 2-core development VM (Intel(R) Xeon(R) Processor), 2026-12-02
#: (docs/fleet.md, docs/fleet/calibration.json). Constants: a run of the simulator never
#: re-measures them.
REFERENCE_SUSTAINED_GFLOPS = {
    "executorch-xnnpack-fp32": 63.10,
    "executorch-xnnpack-int8": 23.91,
    "executorch-portable-fp32": 17.29,
    "executorch-portable-int8": 17.39,
    "onnxruntime-fp32": 88.83,
    "onnxruntime-int8": 79.04,
}

#: The reference device's fp32 matmul peak (256^3 matmul, one thread, same calibration run): what a
#: simulated device reports as its ``gflops`` capability (over its slowdown), so that the
#: coordinator's configurators see the same fleet in every run.
REFERENCE_PEAK_GFLOPS = 146.5


def program_kind(manifest: dict) -> str:
    """The kind of program an artifact's manifest describes (a key of the rate tables), as its
    format names it (``export.formats``: ``ArtifactFormat.program_kind``)."""
    return get_format(manifest.get("format") or DEFAULT_FORMAT).program_kind(manifest.get("tier") or {})


@dataclass(frozen=True)
class TaskCost:
    """One task on a profile's virtual clock (seconds), and the counted work behind it."""

    download_seconds: float
    compute_seconds: float
    upload_seconds: float
    flops: float
    sustained_gflops: float

    @property
    def total(self) -> float:
        return self.download_seconds + self.compute_seconds + self.upload_seconds

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def download_seconds(profile, bytes_down: int, files_fetched: int) -> float:
    """The task request and every fetched file: a round trip each, plus the bytes over the link."""
    return (1 + files_fetched) * 2 * profile.latency_s + bytes_down * 8 / (profile.bandwidth_mbps * 1e6)


def upload_seconds(profile, bytes_up: int) -> float:
    """One round trip carrying ``bytes_up`` (0 when nothing is uploaded)."""
    if not bytes_up:
        return 0.0
    return 2 * profile.latency_s + bytes_up * 8 / (profile.bandwidth_mbps * 1e6)


def compute_seconds(profile, kind: str, flops: float) -> float:
    return flops / (profile.sustained_gflops(kind) * 1e9) if flops else 0.0


def task_cost(profile, kind: str, flops: float, bytes_down: int, files_fetched: int, bytes_up: int) -> TaskCost:
    """A task's virtual cost on ``profile`` (a :class:`fleet.profiles.DeviceProfile`)."""
    return TaskCost(download_seconds=download_seconds(profile, bytes_down, files_fetched),
                    compute_seconds=compute_seconds(profile, kind, flops),
                    upload_seconds=upload_seconds(profile, bytes_up), flops=float(flops),
                    sustained_gflops=profile.sustained_gflops(kind))

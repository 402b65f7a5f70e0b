"""What an upload must satisfy before the coordinator keeps it.

An update is a safetensors file holding exactly the LoRA tensors of the job's manifest
(PEFT keys, float32, the manifest's shapes): the device's adapter values after local
training. The safetensors header is parsed here directly (a JSON header and a byte buffer),
so a hostile file is refused from its header before any tensor is materialized, and every
byte is accounted for: offsets must tile the buffer exactly, with no gaps, overlaps or
trailing data.

The ``meta`` part (:func:`parse_meta`) is checked as strictly: required fields, the optional
``metrics`` object of device measurements (:data:`METRIC_FIELDS`), nothing else.

Checks of the update, in order, each with its error code (status in ``coordinator.errors``):
size (``update_too_large``), format (``malformed_update``), names (``tensor_names``),
dtypes (``tensor_dtype``), shapes (``tensor_shape``), finite values (``non_finite``),
and the L2 norm of the change from the round's start adapter (``norm_exceeded``).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from coordinator import fields, strict_json
from coordinator.errors import ApiError

#: safetensors dtype names -> (manifest dtype, bytes per element)
SAFETENSORS_DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
_NUMPY_DTYPES = {"float32": "<f4"}
#: A safetensors header larger than this is refused outright (real ones are a few KB).
MAX_HEADER_BYTES = 16 * 2**20
#: Allowance for the safetensors header on top of the tensors' bytes when bounding an upload.
HEADER_ALLOWANCE_BYTES = 4096
HEADER_ALLOWANCE_PER_TENSOR = 256
_MAX_LISTED = 5


@dataclass(frozen=True)
class UpdateMeta:
    """The JSON ``meta`` part of a result upload."""

    num_examples: int
    loss_before: float
    loss_after: float
    train_seconds: float
    bytes_downloaded: int
    bytes_uploaded: int
    #: The device's hardware measurements of this task (``METRIC_FIELDS``), or None.
    metrics: dict | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ValidatedUpdate:
    tensors: dict[str, np.ndarray]
    delta_norm: float
    size: int


# --- meta --------------------------------------------------------------------------------------
# Every claim has a range a real device stays far inside; nothing beyond it can be true, and
# everything within it fits its database column and any sum the dashboard takes over it.

#: bytes a device may say it moved for one task (1 TiB: a phone moves a few hundred MB).
MAX_TRANSFER_BYTES = 2**40
#: a cross-entropy loss (ln of a 262k vocabulary is 12.5; a diverged model may go far higher).
MAX_LOSS = 1e6
#: seconds of any one measured duration (115 days; a round's deadline is at most 30).
MAX_SECONDS = 1e7
MAX_STEPS = 1_000_000


def _int_field(name: str, value, minimum: int, maximum: int) -> int:
    return fields.integer(f"meta.{name}", value, minimum, maximum)


def _number_field(name: str, value, minimum: float, maximum: float, *, exclusive: bool = False) -> float:
    return fields.number(f"meta.{name}", value, minimum, maximum, exclusive_minimum=exclusive)


def _bool_field(name: str, value) -> bool:
    return fields.boolean(f"meta.{name}", value)


def _optional(check):
    return lambda name, value: None if value is None else check(name, value)


#: ``meta.metrics``: what a device measured while running the task, every key optional.
#: name -> check(qualified name, value) returning the stored value.
METRIC_FIELDS = {
    "steps": lambda n, v: _int_field(n, v, 1, MAX_STEPS),                   # local steps run
    "flops_per_step": lambda n, v: _number_field(n, v, 0.0, 1e18),          # analytical FLOPs of one step
    "compute_seconds": lambda n, v: _number_field(n, v, 0.0, MAX_SECONDS),  # wall time inside training steps
    "achieved_gflops": lambda n, v: _number_field(n, v, 0.0, 1e7),
    "peak_gflops": lambda n, v: _number_field(n, v, 0.0, 1e7, exclusive=True),  # measured matmul peak
    "flop_utilization": lambda n, v: _number_field(n, v, 0.0, 1e3),         # achieved / peak
    "download_seconds": lambda n, v: _number_field(n, v, 0.0, MAX_SECONDS),  # fetching this task's files
    # A device cannot time the upload that carries this meta: it reports its previous one.
    "previous_upload_seconds": _optional(lambda n, v: _number_field(n, v, 0.0, MAX_SECONDS)),
    "peak_rss_mb": lambda n, v: _number_field(n, v, 0.0, 1e8),
    "slowdown": lambda n, v: _number_field(n, v, 1.0, 1e6),                 # simulated devices: compute slowdown
    "virtual_seconds": lambda n, v: _number_field(n, v, 0.0, 1e9),          # simulated devices: simulated round time
    # Asked for by configurators that learn from losses (FedSpine): the loss on a batch the device
    # held out of its training data, before and after this task's training
    "probe_loss_before": lambda n, v: _number_field(n, v, 0.0, MAX_LOSS),
    "probe_loss_after": lambda n, v: _number_field(n, v, 0.0, MAX_LOSS),
    # the part of bytes_downloaded that was the artifact (paid once per tier, not every round)
    "artifact_bytes_downloaded": lambda n, v: _int_field(n, v, 0, MAX_TRANSFER_BYTES),
    # HetLoRA: the device says it pruned its rank's tail (the coordinator reads the rank itself
    # from the tensors: services/uploads.py)
    "rank_pruned": _bool_field,
}


def parse_metrics(value) -> dict | None:
    """Check ``meta.metrics``: an object of known keys (all optional), each of its type and range."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError("invalid_field", f"meta.metrics must be a JSON object, got {fields.shown(value)}")
    fields.unknown_keys(value, METRIC_FIELDS, "meta.metrics")
    return {name: METRIC_FIELDS[name](f"metrics.{name}", value[name]) for name in sorted(value)}


_META_FIELDS = {
    "num_examples": lambda v: _int_field("num_examples", v, 1, fields.INT32_MAX),
    "loss_before": lambda v: _number_field("loss_before", v, 0.0, MAX_LOSS),
    "loss_after": lambda v: _number_field("loss_after", v, 0.0, MAX_LOSS),
    "train_seconds": lambda v: _number_field("train_seconds", v, 0.0, MAX_SECONDS),
    "bytes_downloaded": lambda v: _int_field("bytes_downloaded", v, 0, MAX_TRANSFER_BYTES),
    "bytes_uploaded": lambda v: _int_field("bytes_uploaded", v, 0, MAX_TRANSFER_BYTES),
}
#: Required, checked against the task rather than stored: the sha256 of the adapter the device
#: started from (the task's ``adapter.sha256``), which ties the update to this task's round.
START_ADAPTER_FIELD = "start_adapter_sha256"
_OPTIONAL_META_FIELDS = {
    "metrics": parse_metrics,
}


def parse_meta(raw: str | bytes, *, max_num_examples: int, start_adapters: Collection[str]) -> UpdateMeta:
    """Parse and check the ``meta`` JSON: every required field present, each of its type and range,
    the optional ``metrics`` object checked key by key, and no other field.

    A device's claims are checked against its task: ``num_examples`` may not exceed what the
    task lets it see (``max_num_examples``: local steps x batch), and ``start_adapter_sha256``
    must name the adapter the task started it from (one of ``start_adapters``: the same adapter
    as ``.ptd`` or as safetensors), so an update trained for another round or task is refused.
    """
    try:
        data = strict_json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("invalid_json", f"meta is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError("invalid_field", "meta must be a JSON object")
    required = {*_META_FIELDS, START_ADAPTER_FIELD}
    fields.unknown_keys(data, required | set(_OPTIONAL_META_FIELDS), "meta")
    missing = sorted(required - set(data))
    if missing:
        raise ApiError("invalid_field", f"meta is missing {missing}")
    values = {name: check(data[name]) for name, check in _META_FIELDS.items()}
    if values["num_examples"] > max_num_examples:
        raise ApiError("invalid_field", f"meta.num_examples is {values['num_examples']}, but this task trains "
                                        f"at most {max_num_examples} examples (local steps x batch)")
    start = data[START_ADAPTER_FIELD]
    if not isinstance(start, str) or start not in start_adapters:
        raise ApiError("invalid_field", f"meta.{START_ADAPTER_FIELD} is {fields.shown(start)}, not the adapter "
                                        "this task started from (the task's adapter.sha256): the update was "
                                        "trained for another task or round")
    values.update({name: check(data.get(name)) for name, check in _OPTIONAL_META_FIELDS.items()})
    artifact_bytes = (values["metrics"] or {}).get("artifact_bytes_downloaded")
    if artifact_bytes is not None and artifact_bytes > values["bytes_downloaded"]:
        raise ApiError("invalid_field", f"meta.metrics.artifact_bytes_downloaded is {artifact_bytes}, more than "
                                        f"the task's bytes_downloaded ({values['bytes_downloaded']})")
    return UpdateMeta(**values)


# --- the update file ---------------------------------------------------------------------------

def max_update_bytes(expected: Sequence[Mapping]) -> int:
    """The largest upload that could be a valid update for ``expected`` tensors."""
    payload = 0
    for spec in expected:
        itemsize = SAFETENSORS_DTYPES.get(_safetensors_name(spec["dtype"]), (None, 4))[1]
        payload += math.prod(spec["shape"]) * itemsize
    return payload + HEADER_ALLOWANCE_BYTES + HEADER_ALLOWANCE_PER_TENSOR * len(expected)


def _safetensors_name(manifest_dtype: str) -> str:
    for name, (dtype, _) in SAFETENSORS_DTYPES.items():
        if dtype == manifest_dtype:
            return name
    return manifest_dtype


@dataclass(frozen=True)
class _Entry:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def parse_safetensors_header(data: bytes) -> tuple[dict[str, _Entry], int]:
    """The tensor entries of a safetensors file and where its byte buffer starts."""
    def malformed(why: str) -> ApiError:
        return ApiError("malformed_update", f"update is not a valid safetensors file: {why}")

    if len(data) < 8:
        raise malformed("shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise malformed(f"header length {header_len} does not fit in {len(data)} bytes")
    try:
        header = strict_json.loads(data[8:8 + header_len].decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise malformed(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise malformed("header is not a JSON object")
    buffer_start = 8 + header_len
    buffer_len = len(data) - buffer_start
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise malformed("__metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise malformed(f"entry {name!r} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise malformed(f"entry {name!r} has unknown dtype {dtype!r}")
        if (not isinstance(shape, list) or
                not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise malformed(f"entry {name!r} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or
                not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets) or
                not 0 <= offsets[0] <= offsets[1] <= buffer_len):
            raise malformed(f"entry {name!r} has invalid data_offsets {offsets!r}")
        if offsets[1] - offsets[0] != math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]:
            raise malformed(f"entry {name!r}: {offsets[1] - offsets[0]} bytes for shape {shape} of {dtype}")
        entries[name] = _Entry(dtype, tuple(shape), offsets[0], offsets[1])
    position = 0
    for entry in sorted(entries.values(), key=lambda e: (e.start, e.end)):
        if entry.start != position:
            raise malformed("tensor data overlaps or leaves gaps")
        position = entry.end
    if position != buffer_len:
        raise malformed(f"{buffer_len - position} bytes of trailing data after the tensors")
    return entries, buffer_start


def _listed(names) -> str:
    names = sorted(names)
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def validate_update(data: bytes, expected: Sequence[Mapping], start: Mapping[str, np.ndarray],
                    max_norm: float) -> ValidatedUpdate:
    """Check an uploaded update against the manifest's tensors and the round's start adapter.

    ``expected``: the manifest's ``lora.tensors`` (name, shape, dtype). ``start``: the global
    adapter the round started from (same keys), against which the change's norm is bounded.
    Raises :class:`ApiError` with the code of the first failed check; returns the tensors.
    """
    limit = max_update_bytes(expected)
    if len(data) > limit:
        raise ApiError("update_too_large", f"update is {len(data)} bytes; an update of this job's "
                                           f"{len(expected)} LoRA tensors is at most {limit} bytes")
    entries, buffer_start = parse_safetensors_header(data)
    wanted = {spec["name"]: spec for spec in expected}
    missing, unexpected = set(wanted) - set(entries), set(entries) - set(wanted)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {_listed(unexpected)}")
        raise ApiError("tensor_names", "update tensors do not match the manifest: " + "; ".join(parts))
    for name, spec in wanted.items():
        got = SAFETENSORS_DTYPES[entries[name].dtype][0]
        if got != spec["dtype"]:
            raise ApiError("tensor_dtype", f"tensor {name} is {got}; the manifest says {spec['dtype']}")
    for name, spec in wanted.items():
        if list(entries[name].shape) != list(spec["shape"]):
            raise ApiError("tensor_shape", f"tensor {name} has shape {list(entries[name].shape)}; "
                                           f"the manifest says {list(spec['shape'])}")
    tensors = {}
    squared = 0.0
    for name in sorted(wanted):
        entry = entries[name]
        if entry.dtype not in ("F32",):
            raise ApiError("tensor_dtype", f"tensor {name}: only float32 updates are supported")
        array = np.frombuffer(data, dtype=_NUMPY_DTYPES["float32"], count=math.prod(entry.shape),
                              offset=buffer_start + entry.start).reshape(entry.shape).astype(np.float32)
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise ApiError("non_finite", f"tensor {name} has {bad} non-finite value(s) (NaN or infinity)")
        delta = array.astype(np.float64) - np.asarray(start[name], dtype=np.float64)
        squared += float(np.dot(delta.ravel(), delta.ravel()))
        tensors[name] = array
    delta_norm = math.sqrt(squared)
    if not delta_norm <= max_norm:
        raise ApiError("norm_exceeded", f"the update changes the adapter by L2 norm {delta_norm:.4g}; "
                                        f"this job accepts at most {max_norm:.4g}")
    return ValidatedUpdate(tensors=tensors, delta_norm=delta_norm, size=len(data))


def max_update_norm(job, tensor_specs) -> float:
    """The longest change a device of ``job`` may send (told to it in its task, checked at upload):
    the job's ``max_update_norm``, and for a DP job the clip norm its devices clip to (with local
    DP, plus what their own noise can add: ``models/update_privacy.server_norm_bound``)."""
    from coordinator.privacy.settings import PrivacySettings
    from models.update_privacy import server_norm_bound

    from models.update_codecs import get_codec

    privacy = PrivacySettings.from_dict(job.privacy)
    if privacy is None:
        return job.max_update_norm
    if not privacy.local_noise and not get_codec(job.update_encoding).lossless:
        # A lossy encoding (int8 rounding, top-k's error feedback) can send a change longer than
        # C; the coordinator clips every change to C at aggregation, which is what the guarantee
        # rests on, so the upload is held to the job's ceiling only.
        return job.max_update_norm
    values = sum(math.prod(spec["shape"]) for spec in tensor_specs)
    bound = server_norm_bound(privacy.clip_norm, privacy.noise_multiplier, values, local_noise=privacy.local_noise)
    # Under local DP the device's noise may take a change past the job's ceiling: the noise's bound rules.
    return max(bound, job.max_update_norm) if privacy.local_noise else min(job.max_update_norm, bound)


def max_encoded_update_bytes(expected: Sequence[Mapping], codec) -> int:
    """The largest upload that could be a valid update for ``expected`` tensors in ``codec``'s encoding."""
    entries = codec.entries(expected)
    return codec.wire_bytes(expected) + HEADER_ALLOWANCE_BYTES + HEADER_ALLOWANCE_PER_TENSOR * len(entries)


def validate_encoded_update(data: bytes, expected: Sequence[Mapping], start: Mapping[str, np.ndarray],
                            max_norm: float, codec) -> ValidatedUpdate:
    """:func:`validate_update` for an update sent as a change in ``codec``'s encoding
    (``models/update_codecs``): exactly the codec's entries (names, dtypes, shapes), finite
    values, a decodable change; the tensors returned are ``start + change`` (float32), and the
    change's norm is bounded as for any update."""
    limit = max_encoded_update_bytes(expected, codec)
    if len(data) > limit:
        raise ApiError("update_too_large", f"update is {len(data)} bytes; a {codec.name} update of this job's "
                                           f"{len(expected)} LoRA tensors is at most {limit} bytes")
    entries, buffer_start = parse_safetensors_header(data)
    wanted = codec.entries(expected)
    missing, unexpected = set(wanted) - set(entries), set(entries) - set(wanted)
    if missing or unexpected:
        parts = [f"missing {len(missing)} entr(ies): {_listed(missing)}"] if missing else []
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} entr(ies): {_listed(unexpected)}")
        raise ApiError("tensor_names", f"a {codec.name} update does not match the manifest: " + "; ".join(parts))
    arrays = {}
    for name, (dtype, shape) in sorted(wanted.items()):
        entry = entries[name]
        if entry.dtype != dtype:
            raise ApiError("tensor_dtype", f"{name} is {entry.dtype}; a {codec.name} update sends {dtype}")
        if tuple(entry.shape) != tuple(shape):
            raise ApiError("tensor_shape", f"{name} has shape {list(entry.shape)}; a {codec.name} update of "
                                           f"this tier sends {list(shape)}")
        numpy_dtype = np.dtype(SAFETENSORS_DTYPES[dtype][0]).newbyteorder("<")
        array = np.frombuffer(data, dtype=numpy_dtype, count=math.prod(shape),
                              offset=buffer_start + entry.start).reshape(shape)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ApiError("non_finite", f"{name} has {int((~np.isfinite(array)).sum())} non-finite value(s)")
        arrays[name] = array
    try:
        change = codec.decode(arrays, expected)
    except ValueError as exc:
        raise ApiError("malformed_update", f"the {codec.name} update cannot be decoded: {exc}") from None
    tensors, squared = {}, 0.0
    for spec in expected:
        name = spec["name"]
        delta = change[name].astype(np.float64)
        tensors[name] = (np.asarray(start[name], dtype=np.float64) + delta).astype(np.float32)
        if not np.isfinite(tensors[name]).all():
            raise ApiError("non_finite", f"tensor {name} overflows float32 once its change is applied")
        squared += float(np.dot(delta.ravel(), delta.ravel()))
    delta_norm = math.sqrt(squared)
    if not delta_norm <= max_norm:
        raise ApiError("norm_exceeded", f"the update changes the adapter by L2 norm {delta_norm:.4g}; "
                                        f"this job accepts at most {max_norm:.4g}")
    return ValidatedUpdate(tensors=tensors, delta_norm=delta_norm, size=len(data))

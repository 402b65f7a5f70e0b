"""Devices: registration with the enrollment key, heartbeats, and the fleet list for admins.

Capabilities (all required at registration; a heartbeat may send any subset to update):

====================  ======================================================================
``ram_mb``            integer >= 0: RAM the app may use for training
``cores``             integer >= 1: CPU cores
``gflops``            number >= 0: measured fp32 GFLOP/s (the app's own micro-benchmark)
``bandwidth_mbps``    number >= 0: measured network bandwidth, megabits per second
``runtimes``          list of strings: training runtimes the app has, by artifact format name
                      (``export.formats.FORMATS``; other names are stored but never matched)
``optimizers``        optional list of strings: optimizers its trainer implements (``"sgd"``,
                      ``"adamw"``); without it, ``["sgd"]``
``privacy``           optional list of strings: what it does to an update for a differentially
                      private job (``"clip"``, ``"local_noise"``); without it, nothing, and
                      DP jobs give it no task
``update_encodings``  optional list of strings: the update encodings it can send besides fp32
                      (``models/update_codecs``: ``"fp16"``, ``"int8"``, ``"int8_tensor"``,
                      ``"topk"``); a job with another encoding gives it no task
====================  ======================================================================

Every number has an upper bound as well as a lower one (``MAX_*`` below): a claim no device
could make is refused (422) rather than stored.

``platform`` (e.g. ``"android-14"``), ``battery`` (percent, 0-100) and ``charging`` (bool) sit
beside ``capabilities``; battery and charging change often and come with heartbeats.
A device is *online* when it was last seen (registration, heartbeat, a task given, a result
accepted) within ``OFFLINE_AFTER_S`` seconds.
"""

from __future__ import annotations

from flask import Blueprint, g
from sqlalchemy import select

from coordinator import fields

from coordinator.api.common import json_body, refuse_unknown, state
from coordinator.auth import admin_required, device_required, new_token, secret_matches, token_digest
from coordinator.errors import ApiError
from coordinator.models import Device, utcnow
from coordinator.services.payloads import device_payload, iso

bp = Blueprint("devices", __name__)

MAX_RUNTIMES = 16
#: Upper bounds of what a device may report (far above any phone or edge board).
MAX_RAM_MB = 10**7           # 10 TB
MAX_CORES = 4096
MAX_GFLOPS = 1e6             # a petaflop
MAX_BANDWIDTH_MBPS = 1e6     # a terabit
#: What a device that names no optimizers can run: the training runtimes all ship SGD.
DEFAULT_OPTIMIZERS = ("sgd",)


def _int(name, value, minimum, maximum=fields.INT32_MAX):
    return fields.integer(name, value, minimum, maximum)


def _number(name, value, minimum, maximum):
    return fields.number(name, value, minimum, maximum)


def _names(name, value, what):
    if (not isinstance(value, list) or len(value) > MAX_RUNTIMES or
            not all(isinstance(v, str) and 0 < len(v) <= 50 for v in value)):
        raise ApiError("invalid_field", f"{name} must be a list of at most {MAX_RUNTIMES} {what} names "
                                        f"(1-50 characters each), got {fields.shown(value)}")
    return list(dict.fromkeys(value))  # duplicates dropped, the device's order of preference kept


CAPABILITIES = {
    "ram_mb": lambda v: _int("capabilities.ram_mb", v, 0, MAX_RAM_MB),
    "cores": lambda v: _int("capabilities.cores", v, 1, MAX_CORES),
    "gflops": lambda v: _number("capabilities.gflops", v, 0, MAX_GFLOPS),
    "bandwidth_mbps": lambda v: _number("capabilities.bandwidth_mbps", v, 0, MAX_BANDWIDTH_MBPS),
    "runtimes": lambda v: _names("capabilities.runtimes", v, "runtime"),
    # Optional: the optimizers the device's trainer implements (default: sgd only). The
    # coordinator never offers a task whose optimizer is not among them.
    "optimizers": lambda v: _names("capabilities.optimizers", v, "optimizer"),
    # Optional: the update privacy steps the device implements (models/update_privacy.py):
    # a DP job is offered only to devices that clip (and, under local DP, add their own noise).
    "privacy": lambda v: _names("capabilities.privacy", v, "privacy step"),
    # Optional: the update encodings it sends (models/update_codecs) besides fp32.
    "update_encodings": lambda v: _names("capabilities.update_encodings", v, "update encoding"),
}
OPTIONAL_CAPABILITIES = {"optimizers", "privacy", "update_encodings"}


def parse_capabilities(value, *, partial: bool) -> dict:
    """Check a capabilities object; with ``partial`` any subset of the fields may be given."""
    if not isinstance(value, dict):
        raise ApiError("invalid_field", "capabilities must be a JSON object")
    refuse_unknown(value, set(CAPABILITIES), "capabilities")
    missing = sorted(set(CAPABILITIES) - OPTIONAL_CAPABILITIES - set(value))
    if missing and not partial:
        raise ApiError("invalid_field", f"capabilities is missing {missing}")
    return {name: check(value[name]) for name, check in CAPABILITIES.items() if name in value}


def _battery(body):
    if body.get("battery") is None:
        return None
    return _number("battery", body["battery"], 0, 100)


def _charging(body):
    value = body.get("charging")
    return None if value is None else fields.boolean("charging", value)


def _text(body, name, max_len):
    value = body.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise ApiError("invalid_field", f"{name} must be a non-empty string of at most {max_len} characters")
    return value.strip()


@bp.post("/devices")
def register():
    """Enroll a device: enrollment key in, device id and bearer token out (the token is shown once)."""
    st = state()
    body = json_body()
    if not secret_matches(body.get("enrollment_key") if isinstance(body.get("enrollment_key"), str) else None,
                          st.enrollment_key_digest):
        raise ApiError("unauthorized", "missing or wrong enrollment_key")
    refuse_unknown(body, {"enrollment_key", "name", "platform", "capabilities", "battery", "charging"},
                   "the registration")
    if "capabilities" not in body:
        raise ApiError("invalid_field", "capabilities is required")
    name, platform = _text(body, "name", 200), _text(body, "platform", 100)
    capabilities = parse_capabilities(body["capabilities"], partial=False)
    battery, charging = _battery(body), _charging(body)
    token = new_token()
    now = utcnow()
    with st.db.write() as session:
        device = Device(name=name, platform=platform, token_sha256=token_digest(token), capabilities=capabilities,
                        battery=battery, charging=charging, registered_at=now, last_seen_at=now)
        session.add(device)
        session.flush()
        device_id = device.id
    return {"device_id": device_id, "token": token,
            "heartbeat_interval_s": st.settings.HEARTBEAT_INTERVAL_S}, 201


@bp.post("/devices/heartbeat")
@device_required
def heartbeat():
    """A device says it is alive, optionally with new battery, charging and capabilities."""
    st = state()
    body = json_body(required=False)
    refuse_unknown(body, {"capabilities", "battery", "charging"}, "the heartbeat")
    capabilities = parse_capabilities(body["capabilities"], partial=True) if "capabilities" in body else None
    battery, charging = _battery(body), _charging(body)
    now = utcnow()
    with st.db.write() as session:
        device = session.get(Device, g.device.id)
        if capabilities:
            device.capabilities = {**device.capabilities, **capabilities}  # new object: SQLAlchemy sees the change
        if "battery" in body:
            device.battery = battery
        if "charging" in body:
            device.charging = charging
        device.last_seen_at = now
    return {"device_id": g.device.id, "last_seen": iso(now), "online": True,
            "heartbeat_interval_s": st.settings.HEARTBEAT_INTERVAL_S}


@bp.get("/devices")
@admin_required
def list_devices():
    """Every registered device with its capabilities, last contact and online state."""
    st = state()
    with st.db.read() as session:
        devices = session.scalars(select(Device).order_by(Device.id)).all()
    return {"devices": [device_payload(d, st.settings.OFFLINE_AFTER_S) for d in devices]}


@bp.get("/devices/<id:device_id>")
@admin_required
def get_device(device_id: int):
    st = state()
    with st.db.read() as session:
        device = session.get(Device, device_id)
    if device is None:
        raise ApiError("not_found", f"no device {device_id}")
    return device_payload(device, st.settings.OFFLINE_AFTER_S)


def _set_disabled(device_id: int, disabled: bool) -> dict:
    st = state()
    with st.db.write() as session:
        device = st.db.lock(session, Device, device_id)
        if device is None:
            raise ApiError("not_found", f"no device {device_id}")
        if disabled and device.disabled_at is None:
            device.disabled_at = utcnow()
        elif not disabled:
            device.disabled_at = None
    with st.db.read() as session:
        return device_payload(session.get(Device, device_id), st.settings.OFFLINE_AFTER_S)


@bp.post("/devices/<id:device_id>/disable")
@admin_required
def disable_device(device_id: int):
    """Refuse this device's token from now on (403 on every request): a lost or misbehaving phone.

    Its accepted updates stay; a task it holds is simply never completed by it.
    """
    return _set_disabled(device_id, True)


@bp.post("/devices/<id:device_id>/enable")
@admin_required
def enable_device(device_id: int):
    """Accept a disabled device's token again."""
    return _set_disabled(device_id, False)

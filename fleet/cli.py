"""``pockettune device`` (one device against a coordinator) and ``pockettune simulate`` (a fleet)."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

from export.formats import DEFAULT_FORMAT
from fleet.profiles import FLEETS, PROFILES
from fleet.runtimes import runtime_names
from models.tier import LOCAL_SAMPLINGS


def add_parser(subparsers) -> None:
    _add_device(subparsers)
    _add_simulate(subparsers)
    _give_export_its_verification(subparsers)


# --- pockettune export --verify ----------------------------------------------------------------

def _give_export_its_verification(subparsers) -> None:
    """Hand ``pockettune export --verify`` the check that trains the artifact in its runtime.

    Verifying drives a device runtime, which lives here: ``export/`` never imports ``fleet/``
    (fleet imports export), so the export command finds the check in its parsed arguments
    (``args.verify_artifact``), put there by this package once ``export`` has registered its
    command (``pockettune/cli.py`` registers export's before fleet's).
    """
    export_command = subparsers.choices.get("export")
    if export_command is not None:
        export_command.set_defaults(verify_artifact=_verify_exported_artifact)


def _verify_exported_artifact(training, out_dir: Path, steps: int) -> dict:
    from fleet.verify import verify_artifact

    return verify_artifact(training, out_dir, steps)


# --- pockettune device -------------------------------------------------------------------------

def _add_device(subparsers) -> None:
    p = subparsers.add_parser(
        "device", help="run one device: register, train the coordinator's tasks on local data, upload",
        description="A PocketTune device in Python: it trains the same ExecuTorch artifacts as the "
                    "Android app, through the same C++ runtime (or ONNX Runtime training artifacts), on "
                    "local data that never leaves it.")
    p.add_argument("--coordinator", required=True, metavar="URL", help="coordinator base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--enroll", metavar="KEY", help="the coordinator's enrollment key (needed the first time)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", metavar="PATH", type=Path,
                      help="a UTF-8 text file of your own; each blank-line separated paragraph is an example")
    data.add_argument("--task", metavar="NAME", help="a built-in task's training split (bbcnews, chatterbot)")
    p.add_argument("--shard", metavar="I/N", default="1/1", help="with --task: this device holds shard I of N (default 1/1)")
    p.add_argument("--partition", default="iid", metavar="SCHEME", help="with --task: iid or dirichlet:ALPHA (default iid)")
    p.add_argument("--seed", type=int, default=0, help="partition and dropout seed (default 0)")
    p.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                   help="where the token and cached artifacts live (default ~/.cache/pockettune/device-NAME)")
    p.add_argument("--name", default=None, help="device name shown on the coordinator (default: the host name)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="native",
                   help="simulated hardware profile: its virtual clock and capabilities are what the "
                        "coordinator hears (default native: this machine as it is, reporting what it measures)")
    p.add_argument("--runtimes", default=DEFAULT_FORMAT, metavar="R,R",
                   help=f"training runtimes this device offers, preferred first: {', '.join(runtime_names())} "
                        f"(default {DEFAULT_FORMAT})")
    p.add_argument("--max-tasks", type=int, default=None, metavar="N", help="exit after N tasks")
    p.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                   help="exit after this long without a task (default: run until stopped)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.set_defaults(func=run_device)


def run_device(args) -> int:
    import socket

    from models.console import UsageError

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fleet.data import LocalData, parse_shard
    from fleet.device import RUNTIME, DeviceAgent, DeviceConfig, default_platform
    from models.tasks import PartitionSpec, UnknownTaskError

    if args.max_tasks is not None and args.max_tasks < 1:
        raise UsageError("--max-tasks must be >= 1")
    try:
        if args.data is not None:
            if not args.data.is_file():
                raise UsageError(f"--data {args.data}: no such file")
            data = LocalData.from_file(args.data)
        else:
            index, count = parse_shard(args.shard)
            data = LocalData.from_task(args.task, index, count, PartitionSpec.parse(args.partition, seed=args.seed))
    except (ValueError, UnknownTaskError) as exc:
        raise UsageError(str(exc)) from None
    name = args.name or socket.gethostname()
    state_dir = args.state_dir or Path.home() / ".cache" / "pockettune" / f"device-{name}"
    runtimes = tuple(r.strip() for r in args.runtimes.split(",") if r.strip())
    try:
        config = DeviceConfig(coordinator=args.coordinator, state_dir=state_dir, data=data,
                              enrollment_key=args.enroll, name=name, profile=PROFILES[args.profile],
                              simulated=args.profile != "native", seed=args.seed, runtimes=runtimes,
                              platform=default_platform(runtimes[0] if runtimes else RUNTIME))
    except ValueError as exc:
        raise UsageError(f"--runtimes: {exc}") from None
    agent = DeviceAgent(config)
    print(f"device {name}: {data.description}", flush=True)
    try:
        agent.ensure_registered()
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None

    def show(outcome):
        loss = (f" loss {outcome.loss_before:.4f} -> {outcome.loss_after:.4f}" if outcome.loss_after is not None else "")
        print(f"task {outcome.task_id} (job {outcome.job_id}, round {outcome.round}): {outcome.status}{loss}, "
              f"{outcome.compute_seconds:.1f} s compute, {outcome.flop_utilization:.1%} FLOP utilization, "
              f"{outcome.bytes_down} B down, {outcome.bytes_up} B up, "
              f"{outcome.virtual_seconds:.1f} s on the {outcome.profile} profile's virtual clock", flush=True)

    agent.run(max_tasks=args.max_tasks, idle_exit_s=args.idle_exit, on_outcome=show)
    return 0


# --- pockettune simulate -----------------------------------------------------------------------

def add_fleet_options(p, devices: int, rounds: int) -> None:
    """Options shared by ``simulate`` and ``demo``."""
    p.add_argument("--devices", type=int, default=devices, help=f"number of simulated devices (default {devices})")
    p.add_argument("--profile", choices=sorted(FLEETS), default="mixed",
                   help="fleet mix: " + "; ".join(f"{k}={v}" for k, v in FLEETS.items()))
    p.add_argument("--rounds", type=int, default=rounds, help=f"federated rounds (default {rounds})")
    p.add_argument("--partition", default="iid", metavar="SCHEME", help="iid or dirichlet:ALPHA (default iid)")
    p.add_argument("--dropout", type=float, default=0.1,
                   help="chance a device vanishes during a task, drawn from --seed, the device and the round "
                        "(default 0.1)")
    p.add_argument("--onnxruntime-devices", type=int, default=0, metavar="N",
                   help="N of the devices run ONNX Runtime instead of ExecuTorch: they get the job's tier "
                        "compiled for ONNX Runtime, and their updates join the same aggregation (default 0)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the profiles' order, the shards, each round's places and the dropouts (default 0)")
    p.add_argument("--workers", type=int, default=2, help="device processes (default 2, one per core)")
    p.add_argument("--devices-per-round", type=int, default=None, help="places per round (default: all devices)")
    p.add_argument("--min-updates", type=int, default=None,
                   help="updates that close a round (default: 75%% of the places)")
    p.add_argument("--round-deadline", type=float, default=300.0, metavar="SECONDS",
                   help="the coordinator's (real) round deadline; must exceed this machine's wall time for a "
                        "round (default 300)")
    p.add_argument("--virtual-deadline", type=float, default=None, metavar="SECONDS",
                   help="the round deadline on the virtual clock: results finishing later are cut "
                        "(default: --round-deadline)")
    p.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                   help="run folder: coordinator database, device caches, report (default: a new temp folder)")
    p.add_argument("--shared-prefix-cache", default=None, metavar="DIR",
                   help="one frozen-prefix cache directory for all simulated devices: the host computes an "
                        "example's prefix once; each device's virtual clock still pays its own (default: one "
                        "cache per device)")
    p.add_argument("--shared-downloads", default=None, metavar="DIR",
                   help="one directory of artifact files for all simulated devices: the host downloads each file "
                        "once; each device still counts and is charged its own download (default: every device "
                        "downloads every file)")
    p.add_argument("--coordinator", metavar="URL", default=None,
                   help="use a running coordinator (with --admin-token and --enroll) instead of starting one")
    p.add_argument("--admin-token", default=None)
    p.add_argument("--enroll", metavar="KEY", default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_simulate(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate", help="run a heterogeneous simulated fleet against a real coordinator on this machine",
        description="N devices with profiles (compute slowdown, RAM, bandwidth, dropout, battery) train "
                    "the real ExecuTorch (or ONNX Runtime) artifacts against a coordinator over loopback "
                    "HTTP. Each task is costed on a virtual clock (counted FLOPs over the profile's calibrated "
                    "rate, bytes over its link), and each round accepts results in virtual finish order, "
                    "whatever order this machine produces them in; reports each round on the real and the "
                    "virtual clock.")
    add_fleet_options(p, devices=8, rounds=3)
    p.add_argument("--model", default="tiny", help="base model (default tiny; smollm2-135m for real runs)")
    p.add_argument("--task", default="bbcnews", help="task (bbcnews, chatterbot)")
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="the learning rate across rounds (cosine: from --lr in round 1 down towards "
                        "--lr-min x --lr after the last)")
    p.add_argument("--lr-min", type=float, default=0.0, help="the cosine schedule's floor, a fraction of --lr")
    p.add_argument("--local-sampling", choices=LOCAL_SAMPLINGS, default="sequential",
                   help="how each device picks a round's examples: in order, or its classes in turn "
                        "(class_balanced: the remedy for a dirichlet partition's label skew; docs/results.md)")
    p.add_argument("--prune", type=float, default=0.0)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-layers", type=int, default=2)
    p.add_argument("--quantize", choices=("none", "int8"), default="none")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--eval-examples", type=int, default=None,
                   help="held-out examples each scored global adapter is scored on (default: the whole held-out "
                        "split; 0: no scoring)")
    p.add_argument("--eval-every", type=int, default=1,
                   help="score every K-th round's global adapter (round 0 and the last always): scoring costs "
                        "about as much host time as a round")
    add_heterogeneity_options(p)
    p.add_argument("--report", type=Path, default=None, metavar="PATH", help="write the JSON report here")
    p.set_defaults(func=run_simulate)


def add_heterogeneity_options(p) -> None:
    """How the job chooses each device's tier and combines unequal adapters."""
    p.add_argument("--strategy", default="fedavg", help="aggregation: fedavg, zero_padding, hetlora (zero-padding weighted by each update's norm; devices self-prune their rank), flexlora, fedavgm")
    p.add_argument("--configurator", default="uniform",
                   help="who picks each device's tier: uniform (the job's tier for all), legend, fedspine, hetlora")
    p.add_argument("--configurator-options", type=_json_object, default=None, metavar="JSON",
                   help='the configurator\'s options as a JSON object, e.g. \'{"prune_ratios": [0, 0.5]}\'')
    p.add_argument("--prepare-tiers", choices=("on_demand", "all"), default="on_demand",
                   help="export every tier the configurator may hand out before round 1 (all), or when first "
                        "given to a device (on_demand)")


def _json_object(text: str) -> dict:
    import argparse
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def heterogeneity_fields(args) -> dict:
    fields = {"strategy": args.strategy, "configurator": args.configurator, "prepare_tiers": args.prepare_tiers}
    if args.configurator_options:
        fields["configurator_options"] = args.configurator_options
    return fields


def fleet_spec_from(args, job: dict):
    from fleet.simulator import FleetSpec
    from models.console import UsageError

    if args.devices < 1 or args.rounds < 1 or args.workers < 1:
        raise UsageError("--devices, --rounds and --workers must be >= 1")
    if not 0 <= args.dropout < 1:
        raise UsageError("--dropout must be in [0, 1)")
    if args.round_deadline <= 0 or (args.virtual_deadline is not None and args.virtual_deadline <= 0):
        raise UsageError("--round-deadline and --virtual-deadline must be > 0")
    if not 0 <= args.onnxruntime_devices <= args.devices:
        raise UsageError(f"--onnxruntime-devices must be in [0, --devices={args.devices}]")
    from models.tasks import PartitionSpec

    try:
        PartitionSpec.parse(args.partition)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.onnxruntime_devices:
        from export.formats.onnxruntime import OnnxRuntimeFormat

        tier = job.get("tier") or {}
        reason = OnnxRuntimeFormat().unsupported({**tier, "train": {**tier.get("train", {}), "lr": job.get("lr", 0.05)}})
        if reason is not None:
            raise UsageError(f"--onnxruntime-devices: this job cannot train on ONNX Runtime: {reason}") from None
    return FleetSpec(devices=args.devices, fleet=args.profile, rounds=args.rounds, task=job["task"],
                     partition=args.partition, seed=args.seed, dropout=args.dropout, workers=args.workers,
                     devices_per_round=args.devices_per_round, min_updates=args.min_updates,
                     round_deadline_s=args.round_deadline, virtual_deadline_s=args.virtual_deadline,
                     job={k: v for k, v in job.items() if k != "task"}, onnxruntime_devices=args.onnxruntime_devices,
                     shared_prefix_cache=getattr(args, "shared_prefix_cache", None),
                     shared_downloads=getattr(args, "shared_downloads", None))


def run_fleet(args, spec, progress_label: str = ""):
    """Start (or join) a coordinator, run the fleet, return (report, simulation, workdir)."""
    from fleet.local_coordinator import LocalCoordinator
    from fleet.simulator import FleetSimulation
    from models.console import UsageError

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pockettune-sim-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.coordinator:
        if not (args.admin_token and args.enroll):
            raise UsageError("--coordinator needs --admin-token and --enroll")
        sim = FleetSimulation(spec, args.coordinator, args.admin_token, args.enroll, workdir,
                              progress=not args.no_progress)
        return sim.run(), sim, workdir, None
    coordinator = LocalCoordinator(workdir, extra_args=["--tick", "0.5"]).start()
    print(f"coordinator: {coordinator.base_url} (log {coordinator.log_path}, data {coordinator.instance})", flush=True)
    sim = FleetSimulation(spec, coordinator.base_url, coordinator.admin_token, coordinator.enrollment_key, workdir,
                          progress=not args.no_progress)
    try:
        return sim.run(), sim, workdir, coordinator
    except BaseException:
        coordinator.stop()
        raise


def run_simulate(args) -> int:
    from fleet.simulator import format_report, save_report
    from models.tier import Tier
    from models.console import UsageError

    tier = {"prune_ratio": args.prune, "lora_rank": args.lora_rank, "lora_layers": args.lora_layers,
            "quantize": args.quantize, "batch": args.batch, "seq": args.seq}
    train = {"lr_schedule": args.lr_schedule, "lr_min": args.lr_min} if args.lr_schedule != "constant" else {}
    if args.local_sampling != "sequential":
        train["local_sampling"] = args.local_sampling
    if train:
        tier["train"] = train
    try:
        Tier.from_dict({**Tier().to_dict(), **tier}).validate()
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    job = {"model": args.model, "task": args.task, "tier": tier, "local_steps": args.local_steps, "lr": args.lr,
           "eval_every": args.eval_every, **heterogeneity_fields(args)}
    if args.eval_examples is not None:
        job["eval_examples"] = args.eval_examples
    spec = fleet_spec_from(args, job)
    started = time.monotonic()
    report, sim, workdir, coordinator = run_fleet(args, spec)
    try:
        adapter = sim.download_adapter(report["job_id"], workdir / "final_adapter")
    finally:
        if coordinator:
            coordinator.stop()
    report_path = args.report or workdir / "report.json"
    save_report(report, report_path)
    print(format_report(report))
    print(f"job {report['job_id']} {report['status']} in {time.monotonic() - started:.0f} s; "
          f"virtual time {report['virtual_seconds']:.0f} s; report {report_path}; final adapter {adapter}")
    return 0 if report["status"] == "completed" else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: pockettune simulate --help")

"""``pockettune demo``: the whole system in one command, on real weights and real text.

It starts a coordinator (SQLite, in the run folder), which exports SmolLM2-135M into an
ExecuTorch training program; a simulated mixed fleet (fast, mid-range and budget phones,
some dropping out) trains it on BBC News shards for a few rounds; the coordinator evaluates
every global adapter on held-out articles. At the end it prints per-round accuracy against
the zero-shot start, the bytes moved, where the API was, and the final PEFT adapter's path.
"""

from __future__ import annotations

import time
from pathlib import Path

#: The demo's job: what fits a 15-minute budget on 2 cores while still learning visibly.
DEMO_JOB = {
    "model": "smollm2-135m",
    "task": "bbcnews",
    "tier": {"prune_ratio": 0.0, "lora_rank": 8, "lora_layers": 4, "quantize": "int8", "batch": 4, "seq": 64,
             "train": {"momentum": 0.5}},
    "local_steps": 8,
    "lr": 0.1,
    # no eval_examples: every global adapter is scored on the whole held-out split (334 articles)
}


def add_parser(subparsers) -> None:
    from fleet.cli import add_fleet_options

    p = subparsers.add_parser(
        "demo", help="run the end-to-end demo: coordinator, SmolLM2-135M export, simulated fleet on BBC News",
        description=__doc__.split("\n\n")[1].replace("\n", " "))
    add_fleet_options(p, devices=10, rounds=5)
    p.add_argument("--model", default=DEMO_JOB["model"], help="base model (default smollm2-135m; tiny for a smoke run)")
    p.add_argument("--local-steps", type=int, default=DEMO_JOB["local_steps"])
    p.add_argument("--lr", type=float, default=DEMO_JOB["lr"])
    p.add_argument("--serve", action="store_true", help="keep the coordinator running after the demo (Ctrl-C stops it)")
    # A virtual deadline of 15 minutes: a budget phone (10x slower, 1 Mbps) cannot fetch the
    # ~300 MB program in round 1 within it, but trains in time from round 2 on.
    p.set_defaults(func=run_demo, workdir=Path("runs/demo"), devices_per_round=5, min_updates=4,
                   virtual_deadline=900.0)


def held_out_lines(report: dict) -> list[str]:
    """Zero-shot against federated held-out accuracy, each with its 95% interval over the articles
    (``score_text``, the per-round table's format); none when either is missing."""
    from fleet.simulator import score_text

    initial, rounds = report["initial_evaluation"], report["rounds"]
    final = rounds[-1] if rounds else None
    if not (initial and final and final["value"] is not None):
        return []
    return [f"held-out accuracy on {initial.get('num_examples')} articles, with its 95% interval (Wilson):",
            f"  zero-shot (round 0, the untrained adapter): {score_text(initial)}",
            f"  federated, after round {final['round']}:{' ' * 19}{score_text(final)}"]


def run_demo(args) -> int:
    from fleet.cli import fleet_spec_from, run_fleet
    from fleet.simulator import format_report, save_report
    from models.console import UsageError

    if args.local_steps < 1 or args.lr <= 0:
        raise UsageError("--local-steps must be >= 1 and --lr > 0")
    if args.workdir.exists() and any(args.workdir.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.workdir = args.workdir.with_name(f"{args.workdir.name}-{stamp}")
    if args.shared_downloads is None:
        # ten simulated phones on one host: download the program once (each is still charged its own)
        args.shared_downloads = str(args.workdir / "shared-downloads")
    job = {**DEMO_JOB, "model": args.model, "local_steps": args.local_steps, "lr": args.lr}
    spec = fleet_spec_from(args, job)
    started = time.monotonic()
    print(f"PocketTune demo: {args.devices} simulated devices ({args.profile} fleet, {args.dropout:.0%} dropout, "
          f"{args.partition} BBC News shards), {args.rounds} rounds of {args.local_steps} local steps on {args.model} "
          f"(int8 base, LoRA r{job['tier']['lora_rank']} on the last {job['tier']['lora_layers']} layers)", flush=True)
    print(f"run folder: {args.workdir}", flush=True)
    report, sim, workdir, coordinator = run_fleet(args, spec)
    try:
        adapter = sim.download_adapter(report["job_id"], workdir / "final_adapter")
        save_report(report, workdir / "report.json")
        lines = [format_report(report), "", *held_out_lines(report)]
        rounds = report["rounds"]
        moved_down = sum(r["bytes_down"] for r in rounds)
        moved_up = sum(r["bytes_up"] for r in rounds)
        lines.append(f"bytes moved: {moved_down / 1e6:.1f} MB down (artifacts once per device, then adapters), "
                     f"{moved_up / 1e6:.2f} MB up (adapter updates only)")
        base_url = coordinator.base_url if coordinator else args.coordinator
        api = f"{base_url}/api/v1/jobs/{report['job_id']}"
        dashboard = f"{base_url}/jobs/{report['job_id']}"
        if coordinator and not args.serve:
            lines.append(f"coordinator API: {api}, dashboard: {dashboard} (stopped now; --serve keeps it up; "
                         f"its database and blobs stay in {coordinator.instance})")
        else:
            lines.append(f"coordinator API: {api}")
            lines.append(f"dashboard: {dashboard}")
        lines.append(f"final PEFT adapter: {adapter} (PeftModel.from_pretrained loads it)")
        lines.append(f"report: {workdir / 'report.json'}; total time {time.monotonic() - started:.0f} s")
        text = "\n".join(lines)
        print(text)
        (workdir / "demo-output.txt").write_text(text + "\n")
        if args.serve and coordinator:
            print(f"serving {base_url} until Ctrl-C (admin token: {coordinator.admin_token})", flush=True)
            try:
                coordinator.process.wait()
            except KeyboardInterrupt:
                pass
    finally:
        if coordinator:
            coordinator.stop()
    return 0 if report["status"] == "completed" else 1

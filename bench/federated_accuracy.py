"""Federated accuracy against a tuned centralized reference, over several seeds, in one invocation.

Every arm trains the same tier of the same model on the same content-disjoint BBC News split
and is scored on the *whole* held-out split (every held-out article) with a 95% interval:

- **federated, IID** and **federated, Dirichlet(alpha)**, one run per seed: a simulated
  heterogeneous fleet (``fleet.simulator``) of real devices training the real ExecuTorch
  program against one real coordinator (one job per run), whose evaluator scores every global
  adapter (round 0 = zero-shot). Virtual time comes from the cost model, so the host's load
  moves no result, only the wall time of this script.
- **centralized**: the same LoRA trained on the pooled training split in eager PyTorch, from
  the same frozen-prefix hidden states, with its learning rate *tuned* (a sweep scored on a
  validation slice carved out of the training split, never on held-out data), then trained
  once per seed on the whole training split and scored on the held-out split by the same
  task code the coordinator runs. It is the reference the federated arms are measured against.

The tier (``EXPERIMENT_TIER``) is chosen so that the whole comparison (3 seeds x 2 federated
arms x enough rounds to plateau, plus the centralized sweep and seeds) fits 90 minutes on a
2-core machine: LoRA in the last 4 layers with a frozen-prefix cache (devices compute the
26 frozen layers once per example; simulated devices on one host share that cache, still
charging each device's virtual clock for its own), the label-position head (the loss covers
one topic word, so the LM head runs at one position per row), fp32 frozen weights (XNNPACK
delegates fp32 matmuls; int8 ones still run on portable kernels).

The fleet is ``flagship_midrange``: the mixed fleet's flagship and mid-range phones (3:4, so
1x and 3x compute, 50 and 10 Mbit/s links) without its budget phones, whose 2 GB is below the
RAM this fp32 tier needs (about 2.1 GB), so they would never be offered a task and their
shards would never train. A run that ends with fewer devices trained than the fleet has says
so (``devices_trained`` in the summary).

Writes ``<out>/results.json`` (everything), ``<out>/summary.json`` (the headline per arm:
mean over seeds, interval, per-seed values) and PNG plots with confidence bands;
``docs/results.md`` quotes them with this command line::

    python bench/federated_accuracy.py --out docs/results
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: The tier every arm trains (see the module docstring for why each choice).
EXPERIMENT_TIER = {"prune_ratio": 0.0, "lora_rank": 8, "lora_layers": 4, "lora_targets": ["q_proj", "v_proj"],
                   "quantize": "none", "batch": 4, "seq": 128, "prefix_cache": True, "loss_positions": 1,
                   "train": {"optimizer": "adamw", "weight_decay": 0.0}}


def experiment_tier(args) -> dict:
    """``EXPERIMENT_TIER`` with the devices' optimizer chosen on the command line (the
    centralized reference always uses AdamW, tuned on its own)."""
    train = ({"optimizer": "sgd", "momentum": args.momentum} if args.optimizer == "sgd"
             else {"optimizer": "adamw", "weight_decay": 0.0})
    if args.lr_schedule != "constant":
        train.update(lr_schedule=args.lr_schedule, lr_min=args.lr_min)
    if args.local_sampling != "sequential":
        train.update(local_sampling=args.local_sampling)
    return {**EXPERIMENT_TIER, **(args.tier or {}), "train": train}


def cpu_model() -> str:
    from fleet.calibrate import _cpu_model

    return _cpu_model()


# --- federated arms -----------------------------------------------------------------------------

def federated_run(args, coordinator, partition: str, seed: int, workdir: Path, job_extra: dict | None = None,
                  summarize_outcomes=None) -> dict:
    """One simulated fleet's job to the end. ``job_extra`` adds job fields (a configurator and
    its options, a strategy); ``summarize_outcomes(report)`` may read the per-task outcomes
    before they are dropped from the report (they are large), and its result is kept under
    ``report["outcome_summary"]``."""
    from fleet.simulator import FleetSimulation, FleetSpec, format_report

    job = {"model": args.model, "tier": experiment_tier(args), "local_steps": args.local_steps, "lr": args.lr,
           "strategy": args.strategy, "eval_every": args.eval_every, **(job_extra or {})}
    if args.eval_examples is not None:
        job["eval_examples"] = args.eval_examples
    spec = FleetSpec(devices=args.devices, fleet=args.profile, rounds=args.rounds, task="bbcnews",
                     partition=partition, seed=seed, dropout=args.dropout, workers=args.workers,
                     devices_per_round=args.devices_per_round, min_updates=args.min_updates,
                     round_deadline_s=args.round_deadline, virtual_deadline_s=args.virtual_deadline, job=job,
                     shared_prefix_cache=str(args.run_root / "prefix-cache"),
                     shared_downloads=str(args.run_root / "shared-downloads"))
    sim = FleetSimulation(spec, coordinator.base_url, coordinator.admin_token, coordinator.enrollment_key,
                          workdir, progress=True)
    report = sim.run(timeout_s=3 * 3600)
    # What scoring cost the host (one torch thread beside the devices' two workers), per adapter.
    from fleet.simulator import evaluation_of

    report["evaluation_seconds"] = [(evaluation_of(sim.job, r) or {}).get("seconds")
                                    for r in range(0, len(report["rounds"]) + 1)]
    print(f"\nfederated, {partition}, seed {seed}:\n{format_report(report)}\n", flush=True)
    trained = devices_trained(report)
    if trained < args.devices:
        print(f"note: {trained} of the {args.devices} devices trained; the others were never given a task "
              "(too little RAM for the tier, or never placed), so their shards did not train", flush=True)
    shutil.rmtree(workdir / "devices", ignore_errors=True)   # 20 copies of the program: GBs
    if summarize_outcomes is not None:
        report["outcome_summary"] = summarize_outcomes(report)
    report.pop("outcomes", None)
    return report


# --- centralized reference ----------------------------------------------------------------------

class Centralized:
    """Eager LoRA training of the tier's top layers on the pooled training split.

    The frozen prefix of every training example is computed once (eager, the layers below the
    lowest LoRA layer) and shared by the learning-rate sweep and every seed; only the top
    layers train, exactly what the devices' top program trains.
    """

    def __init__(self, args, device_prefix=None):
        import torch

        from export.pipeline import build_training_model
        from models.registry import load_base_model
        from models.tasks import get_task
        from models.tier import Tier

        self.args = args
        self.task = get_task("bbcnews")
        self.tier = Tier.from_dict({**Tier().to_dict(), **EXPERIMENT_TIER, **(args.tier or {})})
        torch.manual_seed(0)
        self.base = load_base_model(args.model)
        self.tokenizer = self.base.tokenizer
        self.model = build_training_model(self.base, self.tier).peft_model
        self.initial = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        train = self.task.examples("train")
        # Validation: a fixed tenth of the training split (by id hash), for the sweep only.
        self.validation = [e for e in train if _bucket(e.example_id) < 10]
        self.fit = [e for e in train if _bucket(e.example_id) >= 10]
        self.train = train
        self.heldout = self.task.eval_examples(args.eval_examples)
        self._hidden: dict[str, "torch.Tensor"] = {}
        #: the devices' shared frozen-prefix cache (same program, same keys), when the federated
        #: arms ran first: their hidden states are reused and the misses computed by the same
        #: ExecuTorch prefix program, so the reference trains on exactly what devices train on
        self.device_prefix = device_prefix
        self.label_ids = [self.tokenizer(f" {label}", add_special_tokens=False)["input_ids"][0]
                          for label in self.task.labels]
        #: eager prefix hidden states kept across invocations (when no device cache is at hand)
        self.eager_cache = Path(args.run_root) / "eager-prefix.pt"
        if device_prefix is None and self.eager_cache.exists():
            self._hidden = torch.load(self.eager_cache)

    def _encoded(self, examples):
        """(ids, labels, hidden) per example, the frozen prefix computed once per example."""
        import torch

        from models.frozen_prefix import FrozenPrefixModel

        scorer = FrozenPrefixModel(self.model)
        todo = [e for e in examples if e.example_id not in self._hidden]
        step = self.tier.batch   # the prefix program is compiled for the tier's batch
        for start in _progress(range(0, len(todo) - len(todo) % step, step), "centralized: frozen prefix"):
            chunk = todo[start:start + step]
            ids = torch.stack([self.task.encode(self.tokenizer, e, self.tier.seq)[0] for e in chunk])
            hidden = scorer._compute_bottom(ids) if self.device_prefix is None else self.device_prefix.hidden(ids)
            for e, h in zip(chunk, hidden):
                self._hidden[e.example_id] = h.clone()
        for e in todo[len(todo) - len(todo) % step:]:     # a short tail: eager
            ids = self.task.encode(self.tokenizer, e, self.tier.seq)[0].unsqueeze(0)
            self._hidden[e.example_id] = scorer._compute_bottom(ids)[0].clone()
        if todo and self.device_prefix is None:
            self.eager_cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(self._hidden, self.eager_cache)
        return [(*self.task.encode(self.tokenizer, e, self.tier.seq), self._hidden[e.example_id]) for e in examples]

    def reset(self, seed: int) -> None:
        """A fresh adapter for ``seed``: LoRA A drawn from the seed, LoRA B zero (PEFT's init)."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in self.model.named_parameters():
                if not parameter.requires_grad:
                    continue
                if "lora_A" in name:
                    bound = 1 / math.sqrt(parameter.shape[1])
                    parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2 * bound - bound)
                else:
                    parameter.copy_(self.initial[name])

    def train_steps(self, encoded, lr: float, steps: int, seed: int, on_checkpoint=None, every: int = 0):
        import torch

        from export.program_modules import TopTrainingProgram
        from models.frozen_prefix import first_trained_layer

        self.reset(seed)
        self.model.train()
        top = TopTrainingProgram(self.model, first_trained_layer(self.model), self.tier.loss_positions)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
        # cosine: decay to zero over the run, so the reference ends at a settled point rather
        # than wherever its last constant-rate batch left it
        schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
                    if self.args.central_schedule == "cosine" else None)
        order, rng, batch = [], random.Random(seed), self.args.central_batch
        losses = []
        for step in _progress(range(1, steps + 1), f"centralized lr {lr:g} seed {seed}"):
            if len(order) < batch:
                fresh = list(range(len(encoded)))
                rng.shuffle(fresh)
                order += fresh
            picked, order = order[:batch], order[batch:]
            hidden = torch.stack([encoded[i][2] for i in picked])
            labels = torch.stack([encoded[i][1] for i in picked])
            with top.cut():           # only around the step: scoring needs the whole decoder
                loss = top(hidden, labels)
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            losses.append(float(loss.detach()))
            if on_checkpoint is not None and every and step % every == 0 and step < steps:
                self.model.eval()
                on_checkpoint(step)
                self.model.train()
        self.model.eval()
        return losses

    def validation_accuracy(self, encoded) -> float:
        """Accuracy on the validation slice from its training-format rows (the label word is one
        token here: the argmax over the five label tokens at the labelled position)."""
        import torch

        from export.program_modules import labelled_rows
        from models.frozen_prefix import FrozenPrefixModel

        scorer = FrozenPrefixModel(self.model)
        correct = 0
        head = self.model.get_output_embeddings()
        with torch.no_grad():
            for start in range(0, len(encoded), 32):
                chunk = encoded[start:start + 32]
                hidden = scorer.top(torch.stack([h for _, _, h in chunk]))
                labels = torch.stack([l for _, l, _ in chunk])
                rows, targets, _ = labelled_rows(hidden, labels, 1)
                scores = head(rows)[:, self.label_ids]
                truth = torch.tensor([self.label_ids.index(int(t)) for t in targets])
                correct += int((scores.argmax(dim=1) == truth).sum())
        return correct / len(encoded)

    def heldout_score(self) -> dict:
        """The coordinator's scoring (task.evaluate over the whole held-out split, frozen prefix)."""
        from models.frozen_prefix import FrozenPrefixModel

        if getattr(self, "_scorer", None) is None:
            self._scorer = FrozenPrefixModel(self.model)
        return self.task.evaluate(self._scorer, self.tokenizer, self.heldout, self.tier.seq)

    def run(self, seeds: list[int]) -> dict:
        from models.intervals import formatted

        lrs = self.args.central_lrs
        if len(self.label_ids) != len(set(self.label_ids)):
            raise SystemExit("the label words must be single, distinct tokens of this tokenizer")
        fit, validation = self._encoded(self.fit), self._encoded(self.validation)
        sweep = []
        for lr in lrs:
            self.train_steps(fit, lr, self.args.central_sweep_steps, seeds[0])
            accuracy = self.validation_accuracy(validation)
            sweep.append({"lr": lr, "validation_accuracy": accuracy, "validation_examples": len(validation)})
            print(f"centralized sweep: lr {lr:g} ({self.args.central_schedule}), {self.args.central_sweep_steps} steps of "
                  f"{self.args.central_batch}: validation accuracy "
                  f"{accuracy:.3f} on {len(validation)} articles", flush=True)
        best = max(sweep, key=lambda s: (s["validation_accuracy"], -s["lr"]))["lr"]
        steps, step_sweep = self._choose_steps(fit, validation, best, sweep, seeds[0])
        everything = fit + validation
        per_seed = []
        for seed in seeds:
            curve = []

            def checkpoint(step, curve=curve):
                curve.append({"step": step, **self.heldout_score()})

            started = time.perf_counter()
            self.train_steps(everything, best, steps, seed, on_checkpoint=checkpoint, every=self.args.central_eval_every)
            train_seconds = time.perf_counter() - started
            final = self.heldout_score()
            curve.append({"step": steps, **final})
            per_seed.append({"seed": seed, "train_seconds": train_seconds, "curve": curve, **final})
            print(f"centralized seed {seed}: lr {best:g}, {steps} steps: held-out accuracy "
                  f"{formatted(final['value'], final['ci95'], 'accuracy')} on {final['num_examples']} articles",
                  flush=True)
        zero = self._zero_shot()
        return {"sweep": sweep, "sweep_steps": self.args.central_sweep_steps, "step_sweep": step_sweep,
                "lr": best, "steps": steps,
                "schedule": self.args.central_schedule, "batch": self.args.central_batch,
                "train_examples": len(everything), "zero_shot": zero, "per_seed": per_seed}

    def _choose_steps(self, fit, validation, lr: float, sweep: list[dict], seed: int) -> tuple[int, list[dict]]:
        """The step count, among ``--central-steps``, that scores best on validation at ``lr``
        (coordinate-wise after the rate: a full grid would cost every rate every count). A count
        equal to the sweep's reuses its score. Ties go to fewer steps."""
        candidates = self.args.central_steps
        if len(candidates) == 1:
            return candidates[0], []
        scored = []
        for steps in candidates:
            if steps == self.args.central_sweep_steps:
                accuracy = next(s["validation_accuracy"] for s in sweep if s["lr"] == lr)
            else:
                self.train_steps(fit, lr, steps, seed)
                accuracy = self.validation_accuracy(validation)
            scored.append({"steps": steps, "lr": lr, "validation_accuracy": accuracy})
            print(f"centralized steps: {steps} at lr {lr:g}: validation accuracy {accuracy:.3f}", flush=True)
        return max(scored, key=lambda s: (s["validation_accuracy"], -s["steps"]))["steps"], scored

    def _zero_shot(self) -> dict:
        self.reset(0)
        return self.heldout_score()


def device_prefix_cache(args):
    """The devices' shared prefix cache for the experiment's artifact (None before any federated run)."""
    from export.formats import DEFAULT_FORMAT   # the format the federated arms' jobs export
    from fleet.prefix_cache import PrefixCache

    for manifest_path in sorted((args.run_root / "artifact-cache").glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        tier = manifest.get("tier", {})
        if manifest.get("prefix") and manifest.get("format") == DEFAULT_FORMAT and all(
                tier.get(k) == v for k, v in {**EXPERIMENT_TIER, **(args.tier or {})}.items() if k != "train"):
            return PrefixCache.for_artifact(manifest_path.parent, manifest, args.run_root / "prefix-cache")
    return None


def _bucket(example_id: str) -> int:
    import hashlib

    return int(hashlib.sha256(f"validation:{example_id}".encode()).hexdigest()[:8], 16) % 100


def _progress(iterable, description: str):
    from tqdm import tqdm

    return tqdm(iterable, desc=description, leave=False, disable=not sys.stderr.isatty())


# --- summary and plots --------------------------------------------------------------------------

def arm_summary(values: list[float], intervals: list[list[float]], seeds: list[int]) -> dict:
    """Mean over seeds, its interval (Student t over seeds), and each seed's value with its own
    interval over held-out examples (Wilson)."""
    from models.intervals import mean_interval

    mean = statistics.fmean(values)
    interval = list(mean_interval(values)) if len(values) > 1 else list(intervals[0])
    return {"accuracy": mean, "ci95": interval, "per_seed": values,
            "per_seed_ci95": intervals, "seeds": seeds,
            "heldout_ci95_of_mean": None if not intervals else
            [statistics.fmean(i[0] for i in intervals), statistics.fmean(i[1] for i in intervals)]}


def devices_trained(report: dict) -> int:
    """How many distinct devices had an update accepted in a run (a device the coordinator never
    offers a task, e.g. one with too little RAM for the tier, holds a shard that never trains)."""
    return len({name for r in report["rounds"] for name in (r.get("accepted_devices") or [])})


def summarize(results: dict) -> dict:
    seeds = results["settings"]["seeds"]
    arms = {}
    central = results.get("centralized")
    if central:
        arms["centralized"] = arm_summary([s["value"] for s in central["per_seed"]],
                                          [s["ci95"] for s in central["per_seed"]], seeds)
    for label, runs in results.get("federated", {}).items():
        finals = [run["rounds"][-1] for run in runs]
        arms["iid" if label == "iid" else "dirichlet"] = {
            **arm_summary([r["value"] for r in finals], [r["ci95"] for r in finals], seeds), "partition": label,
            "devices": [run.get("spec", {}).get("devices") for run in runs],
            "devices_trained": [devices_trained(run) for run in runs]}
    summary = {"task": "bbcnews", "model": results["settings"]["model"],
               "heldout_examples": (central or {}).get("per_seed", [{}])[0].get("num_examples")
               or results["federated"][next(iter(results["federated"]))][0]["rounds"][-1].get("num_examples"),
               "seeds": seeds, "arms": arms, "tier": results.get("tier", EXPERIMENT_TIER), "cpu": results["cpu"],
               "strategy": results["settings"].get("strategy"),
               "wall_seconds": results.get("wall_seconds")}
    if "centralized" in arms:
        reference = arms["centralized"]["accuracy"]
        summary["relative_to_centralized"] = {k: v["accuracy"] / reference for k, v in arms.items()
                                              if k != "centralized"}
    return summary


def per_round_markdown(results: dict) -> str:
    """Markdown tables, one per federated arm: each scored round's mean over seeds with its 95% t
    interval and every seed's value, and the mean virtual and real length of the rounds since
    the previous row (a round the job did not score has no row of its own). docs/results.md
    quotes them."""
    from models.intervals import mean_interval

    seeds = results["settings"]["seeds"]
    tables = []
    for label, runs in results.get("federated", {}).items():
        lines = [f"### Federated {label}, held-out accuracy (%) per scored round",
                 "| round | mean [95% CI] | " + " | ".join(f"seed {s}" for s in seeds[:len(runs)])
                 + " | virtual min per round | real s per round |",
                 "|---|---|" + "---|" * len(runs) + "---|---|"]
        zero = [run["initial_evaluation"]["value"] for run in runs]
        lines.append(f"| 0 | {100 * statistics.fmean(zero):.1f} | " + " | ".join(f"{100 * v:.1f}" for v in zero)
                     + " | | |")
        since = 0
        for index in range(min(len(run["rounds"]) for run in runs)):
            rounds = [run["rounds"][index] for run in runs]
            if any(r["value"] is None for r in rounds):
                continue
            values = [r["value"] for r in rounds]
            low, high = mean_interval(values) if len(values) > 1 else rounds[0]["ci95"]
            span = [run["rounds"][since:index + 1] for run in runs]
            virtual = statistics.fmean((r["virtual_seconds"] or 0.0) / 60 for part in span for r in part)
            real = statistics.fmean(r["real_seconds"] for part in span for r in part)
            lines.append(f"| {rounds[0]['round']} | {100 * statistics.fmean(values):.1f} [{100 * low:.1f}, "
                         f"{100 * high:.1f}] | " + " | ".join(f"{100 * v:.1f}" for v in values)
                         + f" | {virtual:.1f} | {real:.0f} |")
            since = index + 1
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + "\n"


def plot(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from models.intervals import mean_interval

    paths = []
    central = results.get("centralized")
    for xkey, xlabel, name in (("round", "round", "accuracy_by_round.png"),
                               ("virtual", "virtual time (h, simulated device hardware)",
                                "accuracy_by_virtual_time.png")):
        fig, ax = plt.subplots(figsize=(7.0, 4.4), dpi=120)
        for label, runs in results.get("federated", {}).items():
            curves = []
            for run in runs:
                xs, ys, clock = [0.0], [run["initial_evaluation"]["value"]], 0.0
                for r in run["rounds"]:
                    clock += (r["virtual_seconds"] or 0.0) / 3600
                    if r["value"] is not None:     # rounds the job's eval_every leaves unscored
                        xs.append(r["round"] if xkey == "round" else clock)
                        ys.append(r["value"])
                curves.append((np.array(xs), np.array(ys)))
            width = min(len(c[1]) for c in curves)
            ys = np.array([c[1][:width] for c in curves])
            xs = np.mean([c[0][:width] for c in curves], axis=0)
            mean = ys.mean(axis=0)
            line, = ax.plot(xs, mean, marker="o", markersize=3, label=f"federated, {label} (mean of {len(runs)} seeds)")
            if len(runs) > 1:
                bands = np.array([mean_interval(ys[:, i]) for i in range(width)])
                ax.fill_between(xs, bands[:, 0], bands[:, 1], color=line.get_color(), alpha=0.2)
        if central:
            finals = [s["value"] for s in central["per_seed"]]
            low, high = mean_interval(finals) if len(finals) > 1 else central["per_seed"][0]["ci95"]
            ax.axhline(statistics.fmean(finals), linestyle="--", color="gray",
                       label=f"centralized reference (tuned, mean of {len(finals)} seeds)")
            ax.axhspan(low, high, color="gray", alpha=0.15)
            ax.axhline(central["zero_shot"]["value"], linestyle=":", color="black", label="zero-shot")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy (BBC News, 5 topics)")
        ax.set_ylim(0.5, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("bands: 95% interval of the mean over seeds", fontsize=8)
        fig.tight_layout()
        path = out / name
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


# --- the command --------------------------------------------------------------------------------

def add_fleet_arguments(parser) -> None:
    """The simulated fleets' settings (defaults chosen on validation), shared with the other
    benches that run the same harness (bench/heterogeneity.py)."""
    from fleet.cli import FLEETS
    from models.tier import LOCAL_SAMPLINGS

    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tier", type=json.loads, default=None, metavar="JSON",
                        help="tier fields to change in the experiment's tier (e.g. '{\"lora_layers\": 2}' for a "
                             "smoke run on the tiny model); the defaults are the tier every published figure used")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (each arm runs once per seed)")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--devices-per-round", type=int, default=6)
    parser.add_argument("--min-updates", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=8)
    parser.add_argument("--lr", type=float, default=4e-3,
                        help="the devices' learning rate (chosen on validation, docs/results/tuning_balance.txt)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw", help="the devices' optimizer")
    parser.add_argument("--momentum", type=float, default=0.0, help="the devices' SGD momentum")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default="cosine",
                        help="the job's learning rate across rounds (cosine: from --lr in round 1 towards "
                             "--lr-min x --lr after the last; see models/lr_schedule.py)")
    parser.add_argument("--lr-min", type=float, default=0.0, help="the cosine schedule's floor, a fraction of --lr")
    parser.add_argument("--local-sampling", choices=LOCAL_SAMPLINGS, default="class_balanced",
                        help="how a device picks a round's examples (models.tier.LOCAL_SAMPLINGS; chosen on validation, "
                             "docs/results/tuning_balance.txt)")
    parser.add_argument("--strategy", default="fedavg", help="the job's aggregation strategy (fedavg, fedavgm, ...)")
    parser.add_argument("--profile", choices=sorted(FLEETS), default="flagship_midrange",
                        help="fleet mix (default %(default)s). flagship_midrange: every device has the RAM for "
                             "the fp32 tier, so every shard trains; mixed: 30%% budget phones, whose 2 GB is below "
                             "the fp32 tier's ~2.1 GB, so they train only smaller (pruned) tiers")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the non-IID arm")
    parser.add_argument("--virtual-deadline", type=float, default=900.0, help="a round's deadline on the virtual clock (s)")
    parser.add_argument("--round-deadline", type=float, default=1800.0, help="the coordinator's real deadline (s)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=5,
                        help="the coordinator scores every K-th global adapter (round 0 and the last always)")
    parser.add_argument("--eval-examples", type=int, default=None,
                        help="held-out articles scored per adapter (default: the whole held-out split)")


def check_fleet_arguments(parser, args) -> None:
    """Parse the seeds and refuse settings no fleet can run."""
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not args.seeds or args.devices < 1 or args.rounds < 1 or args.local_steps < 1 or args.lr <= 0:
        parser.error("need at least one seed, device, round and local step, and a positive --lr")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fleet_arguments(parser)
    parser.add_argument("--central-lrs", default="1e-3,2e-3,4e-3,8e-3",
                        help="the centralized arm's AdamW sweep (4e-3 won the last one: 8e-3 checks it is not the edge)")
    parser.add_argument("--central-steps", default="150",
                        help="the centralized arm's step count, or comma-separated counts to choose among on "
                             "validation at the rate the sweep chose (ties go to fewer steps)")
    parser.add_argument("--central-sweep-steps", type=int, default=150, help="steps of each learning-rate sweep run")
    parser.add_argument("--central-batch", type=int, default=8)
    parser.add_argument("--central-schedule", choices=("constant", "cosine"), default="cosine",
                        help="the centralized arm's learning-rate schedule (cosine decays to zero over each "
                             "run: give --central-sweep-steps the same value as --central-steps)")
    parser.add_argument("--central-eval-every", type=int, default=75, help="held-out checkpoints of the centralized curve")
    parser.add_argument("--only", choices=("iid", "dirichlet", "centralized"), action="append",
                        help="run only these arms (repeatable; default all)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--run-root", type=Path, default=Path("runs") / "federated_accuracy")
    args = parser.parse_args(argv)
    check_fleet_arguments(parser, args)
    args.central_lrs = [float(s) for s in args.central_lrs.split(",") if s.strip()]
    try:
        args.central_steps = sorted({int(s) for s in str(args.central_steps).split(",") if s.strip()})
    except ValueError:
        parser.error(f"--central-steps must be step counts separated by commas, got {args.central_steps!r}")
    if not args.central_steps or min(args.central_steps) < 1 or not args.central_lrs:
        parser.error("--central-steps and --central-lrs need at least one positive value each")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from fleet.local_coordinator import LocalCoordinator
    from models.console import quiet_library_chatter

    quiet_library_chatter()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    args.run_root.mkdir(parents=True, exist_ok=True)
    parts = args.only or ["iid", "dirichlet", "centralized"]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results = {"settings": settings, "cpu": cpu_model(), "cores": __import__("os").cpu_count(),
               "tier": experiment_tier(args), "federated": {}}
    print(f"CPU: {results['cpu']} ({results['cores']} cores); seeds {args.seeds}", flush=True)
    partitions = [p for p, name in (("iid", "iid"), (f"dirichlet:{args.alpha:g}", "dirichlet")) if name in parts]
    if partitions:
        with LocalCoordinator(args.run_root / "coordinator", artifact_cache=args.run_root / "artifact-cache",
                              extra_args=["--tick", "0.5"]) as coordinator:
            for seed in args.seeds:
                for partition in partitions:
                    report = federated_run(args, coordinator, partition, seed,
                                           args.run_root / f"{partition.replace(':', '')}-seed{seed}")
                    results["federated"].setdefault(partition, []).append(report)
                    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    if "centralized" in parts:
        prefix = device_prefix_cache(args)
        results["centralized"] = Centralized(args, prefix).run(args.seeds)
        if prefix is not None:
            results["centralized"]["prefix_from_devices"] = {"reused": prefix.stats.hits, "computed": prefix.stats.computed}
    results["wall_seconds"] = time.monotonic() - started
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    summary = summarize(results)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    if results["federated"]:
        (args.out / "per_round.md").write_text(per_round_markdown(results))
    if results["federated"] and results.get("centralized"):
        for path in plot(results, args.out):
            print(f"plot: {path}")
    print(json.dumps(summary, indent=2))
    print(f"whole comparison: {results['wall_seconds'] / 60:.1f} min on {results['cpu']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

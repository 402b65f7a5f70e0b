"""Choose the federated arms' settings on validation data, before the real comparison runs.

``bench/federated_accuracy.py`` runs the federated arms through real devices, a real
coordinator and the real ExecuTorch programs: about ten minutes per run, too slow to try
settings with. This script simulates the same rounds in eager PyTorch on the same frozen-prefix
hidden states (same tier, same partitioner, same per-round example walk, same AdamW on the
device (or SGD with ``sgd=1``, ``momentum=M``), same example-weighted FedAvg), so a setting costs a few minutes, and scores every
candidate on the *validation* tenth of the training split, which the simulated devices never
train on. The held-out split is never touched here: whatever this script picks is then run
once, for real, by ``federated_accuracy.py``.

What it does not model: the virtual clock (which K of the sampled devices a round accepts
follows the profiles' speed in the real runs; here they are a seeded random K of the
survivors) and the runtime's numerics (ExecuTorch fp32 against eager fp32).

Server optimizers (Reddi et al., "Adaptive Federated Optimization"; Hsu et al., "Measuring the
Effects of Non-Identical Data Distribution", which introduced server momentum for Dirichlet
label skew): with the example-weighted mean device change ``d`` of a round,

- ``fedavg``: ``x += d``;
- ``fedavgm``: ``m = beta * m + d``, ``x += eta * m``.

``balance=1`` makes the devices walk their data class-balanced (``tier.train.local_sampling =
"class_balanced"``, :func:`fleet.data.round_examples`). ``la=TAU`` trains with logit adjustment
by the device's label prior (Menon et al., "Long-tail learning via logit adjustment"; FedLC,
Zhang et al. 2022): ``TAU * log(C * p_c)`` added to class c's label-token logit in the loss, p
from the shard's label counts plus one. Only this simulation offers it (the exported programs
take no bias input); it was tried and did not pay (docs/results/tuning_balance.txt).

``cosine=1`` decays the devices' learning rate across rounds as a job with
``tier.train.lr_schedule = "cosine"`` does (:meth:`models.tier.TrainingHyperparameters.lr_for_round`),
from ``lr`` in round 1 towards ``lr_min`` (a fraction of ``lr``) after the last.

Run: ``python bench/federated_tuning.py --configs "fedavg:lr=2e-3;fedavgm:lr=1e-3,beta=0.7,eta=1"``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from federated_accuracy import Centralized  # noqa: E402  (the shared model, data and scoring)
from models.eval_schedule import is_evaluated_round  # noqa: E402

DEFAULTS = {"lr": 2e-3, "steps": 8, "per_round": 6, "accept": 5, "beta": 0.0, "eta": 1.0, "sgd": 0,
            "momentum": 0.0, "cosine": 0, "lr_min": 0.0, "balance": 0, "la": 0.0}


def parse_config(text: str) -> dict:
    """``fedavgm:lr=1e-3,beta=0.9`` -> {"name": ..., "server": "fedavgm", "lr": 1e-3, "beta": 0.9, ...}."""
    server, _, rest = text.strip().partition(":")
    if server not in ("fedavg", "fedavgm"):
        raise SystemExit(f"unknown server optimizer {server!r}; use fedavg or fedavgm")
    config = {**DEFAULTS, "server": server, "name": text.strip()}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, _, value = item.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"unknown setting {key!r} in {text!r}; known: {', '.join(DEFAULTS)}")
        config[key] = type(DEFAULTS[key])(float(value)) if isinstance(DEFAULTS[key], float) else int(value)
    return config


class FederatedSimulation:
    """The rounds of one federated run, in eager PyTorch, from cached prefix hidden states."""

    def __init__(self, central: Centralized, shards: list[list], config: dict, seed: int, dropout: float):
        self.central, self.shards, self.config, self.seed, self.dropout = central, shards, config, seed, dropout
        self.rng = random.Random(seed)

    def _lora(self):
        return {n: p for n, p in self.central.model.named_parameters() if p.requires_grad}

    def _local(self, start: dict, shard: list, round_number: int, rounds: int) -> dict:
        """One device's new adapter after ``steps`` AdamW steps on its round's examples."""
        import torch

        from export.program_modules import TopTrainingProgram
        from fleet.data import round_examples
        from models.frozen_prefix import first_trained_layer
        from models.tier import TrainingHyperparameters

        central = self.central
        batch, steps = central.tier.batch, self.config["steps"]
        parameters = self._lora()
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(start[name])
        examples = round_examples(shard, round_number, steps, batch,
                                  "class_balanced" if self.config["balance"] else "sequential", self._class_of)
        bias = self._logit_bias(shard) if self.config["la"] else None
        schedule = TrainingHyperparameters(lr=self.config["lr"], lr_schedule="cosine" if self.config["cosine"]
                                           else "constant", lr_min=self.config["lr_min"])
        lr = schedule.lr_for_round(round_number, rounds)
        if self.config["sgd"]:
            optimizer = torch.optim.SGD(list(parameters.values()), lr=lr, momentum=self.config["momentum"])
        else:
            optimizer = torch.optim.AdamW(list(parameters.values()), lr=lr, weight_decay=0.0)
        top = TopTrainingProgram(central.model, first_trained_layer(central.model), central.tier.loss_positions)
        central.model.train()
        with top.cut():
            for step in range(steps):
                chunk = examples[step * batch:(step + 1) * batch]
                if bias is None:
                    loss = top(torch.stack([h for _, _, h in chunk]), torch.stack([l for _, l, _ in chunk]))
                else:
                    loss = top(torch.stack([h for _, _, h in chunk]),
                                              torch.stack([l for _, l, _ in chunk]), bias)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        central.model.eval()
        return {n: p.detach().clone() for n, p in parameters.items()}

    def _logit_bias(self, shard: list):
        """Logit adjustment by the device's label prior (Menon et al., FedLC): ``la * log(C * p_c)``
        on class c's label token, 0 elsewhere; p from the shard's counts plus one."""
        import math

        import torch

        classes = [self._class_of(example) for example in shard]
        counts = [classes.count(c) + 1 for c in range(len(self.central.label_ids))]
        bias = torch.zeros(self.central.tokenizer.vocab_size if len(self.central.tokenizer) is None
                           else len(self.central.tokenizer))
        for token, count in zip(self.central.label_ids, counts):
            bias[token] = self.config["la"] * math.log(len(counts) * count / sum(counts))
        return bias

    def _class_of(self, example) -> int:
        """The class index of an encoded ``(ids, labels, hidden)`` example, from its label token."""
        labels = example[1]
        return self.central.label_ids.index(int(labels[labels != -100][0]))

    def run(self, rounds: int, validation, on_round=None, score_every: int = 1) -> list[float | None]:
        """The validation accuracy after each round; ``None`` for rounds not scored (every
        ``score_every``-th round and the last three are: scoring is most of a round's cost)."""
        import torch

        self.central.reset(self.seed)
        state = {n: p.detach().clone() for n, p in self._lora().items()}
        momentum = {n: torch.zeros_like(v) for n, v in state.items()}
        curve = []
        for round_number in range(1, rounds + 1):
            sampled = self.rng.sample(range(len(self.shards)), self.config["per_round"])
            survivors = [d for d in sampled if self.rng.random() >= self.dropout]
            accepted = survivors[: self.config["accept"]]
            change = {n: torch.zeros_like(v) for n, v in state.items()}
            weights = [min(len(self.shards[d]), self.config["steps"] * self.central.tier.batch) for d in accepted]
            for device, weight in zip(accepted, weights):
                new = self._local(state, self.shards[device], round_number, rounds)
                for n in state:
                    change[n] += (new[n] - state[n]) * (weight / sum(weights))
            for n in state:
                momentum[n] = self.config["beta"] * momentum[n] + change[n]
                state[n] = state[n] + self.config["eta"] * momentum[n]
            with torch.no_grad():
                for name, parameter in self._lora().items():
                    parameter.copy_(state[name])
            scored = is_evaluated_round(round_number, rounds, score_every) or round_number > rounds - 3
            curve.append(self.central.validation_accuracy(validation) if scored else None)
            if on_round:
                on_round(round_number, curve[-1])
        return curve


def main(argv=None) -> int:
    from federated_accuracy import parse_args as bench_args

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", required=True,
                        help="';'-separated settings, e.g. 'fedavg:lr=2e-3;fedavgm:lr=1e-3,beta=0.7' "
                             f"(keys: {', '.join(DEFAULTS)})")
    parser.add_argument("--partition", default="dirichlet:0.5", help="iid or dirichlet:ALPHA")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--score-every", type=int, default=1,
                        help="score every K-th round (the last three always): scoring is most of a round's cost")
    parser.add_argument("--run-root", type=Path, default=Path("runs") / "federated_accuracy")
    parser.add_argument("--json", type=Path, default=None, help="write every curve here")
    args = parser.parse_args(argv)
    if args.score_every < 1:
        parser.error("--score-every must be at least 1")
    configs = [parse_config(c) for c in args.configs.split(";") if c.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    from fleet.calibrate import _cpu_model
    from models.tasks.partition import PartitionSpec, partition
    from models.console import quiet_library_chatter

    quiet_library_chatter()
    central = Centralized(bench_args(["--run-root", str(args.run_root)]))
    fit, validation = central._encoded(central.fit), central._encoded(central.validation)
    print(f"CPU: {_cpu_model()}; {len(fit)} training articles on {args.devices} devices ({args.partition}), "
          f"{len(validation)} validation articles; seeds {seeds}", flush=True)
    labels = [e.label for e in central.fit]
    results = []
    for config in configs:
        finals = []
        for seed in seeds:
            spec = PartitionSpec.parse(args.partition, seed)
            shards = [[fit[i] for i in part] for part in partition(labels, args.devices, spec)]
            started = time.perf_counter()
            curve = FederatedSimulation(central, shards, config, seed, args.dropout).run(
                args.rounds, validation, score_every=args.score_every)
            finals.append(curve[-1])
            results.append({**config, "seed": seed, "curve": curve, "seconds": time.perf_counter() - started})
            print(f"{config['name']:<48} seed {seed}: " + " ".join("  -" if a is None else f"{a:.2f}" for a in curve)
                  + f"  ({time.perf_counter() - started:.0f} s)", flush=True)
        print(f"{config['name']:<48} final mean {statistics.fmean(finals):.3f}, "
              f"last-3-round mean {statistics.fmean(a for r in results[-len(seeds):] for a in r['curve'][-3:]):.3f}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu": _cpu_model(), "settings": vars(args) | {"json": str(args.json),
                                                                                       "run_root": str(args.run_root)},
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

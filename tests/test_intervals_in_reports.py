"""Every printed accuracy and perplexity carries its 95% interval: the bench scripts' and the
demo's formatting on hand-made (fake) reports, rows and evaluations; no model is loaded.

The numbers themselves come from ``models/intervals.py`` (tested in tests/test_tasks.py); these
tests check that each report line puts the interval next to the value, and that the JSON the
scripts write keeps it.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from models.intervals import accuracy_interval, formatted, perplexity_interval

REPO = Path(__file__).resolve().parents[1]


def bench(name: str):
    """A bench script as a module (``bench/`` is not a package); importing one loads no model."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def fake_evaluation(correct: int, total: int = 100) -> dict:
    return {"metric": "accuracy", "value": correct / total, "ci95": list(accuracy_interval(correct, total)),
            "num_examples": total}


def fake_fleet_report(final_correct: int, with_intervals: bool = True) -> dict:
    """A made-up fleet report shaped like ``fleet.simulator``'s: round 0 and three rounds."""
    rounds = []
    for number, correct in enumerate((55, 70, final_correct), start=1):
        evaluation = fake_evaluation(correct)
        if not with_intervals:
            evaluation.pop("ci95")
        rounds.append({"round": number, "virtual_seconds": 100.0 * number, "bytes_up": 1_000_000,
                       "bytes_down": 2_000_000, **evaluation})
    outcomes = [{"round": r["round"], "status": "accepted", "profile": "flagship", "virtual_seconds": 90.0,
                 "artifact_bytes_down": 0, "arm": None} for r in rounds]
    return {"initial_evaluation": fake_evaluation(40), "rounds": rounds, "outcomes": outcomes}


def _heterogeneity_runs(heterogeneity, finals: dict[str, list[int]]) -> dict:
    """Fake runs per arm and seed: the arm's final correct count per seed, earlier rounds fixed."""
    runs = {}
    for label, per_seed in finals.items():
        runs[label] = []
        for final in per_seed:
            report = fake_fleet_report(final_correct=final)
            report["outcome_summary"] = heterogeneity.outcome_summary(report)
            runs[label].append({"curve": heterogeneity.curve(report),
                                "tiers_by_profile": report["outcome_summary"]["tiers_by_profile"]})
    return runs


def test_heterogeneity_summary_has_the_issue_fields_per_arm_with_intervals_over_seeds():
    heterogeneity = bench("heterogeneity")
    runs = _heterogeneity_runs(heterogeneity, {"uniform:fedavg": [82, 84, 80], "legend:fedavg": [83, 84, 79]})
    summary = heterogeneity.summarize(runs, [0, 1, 2], None)
    assert summary["targets"] == pytest.approx([0.81, 0.83, 0.79])          # uniform's final - 1 point, per seed
    legend = summary["arms"]["legend:fedavg"]
    for key in ("time_to_target_s", "speedup_vs_uniform", "final_accuracy", "ci95", "upload_bytes", "download_bytes"):
        assert key in legend
    assert legend["final_accuracy"] == pytest.approx(0.82)
    assert legend["ci95"][0] < 0.82 < legend["ci95"][1]                      # t interval over the 3 seeds
    # Both reach the target in round 3 (the fake rounds before it score 0.55 and 0.70): equal times.
    assert legend["speedup_vs_uniform"] == pytest.approx(1.0)
    assert legend["time_to_target_s"] == pytest.approx(600.0)              # 100 + 200 + 300 virtual s
    assert legend["upload_bytes"] == 3_000_000 and legend["download_bytes"] == 6_000_000
    assert legend["per_seed"][0]["tiers_by_profile"] == {"flagship": {"reference": 3}}
    table = heterogeneity.table(summary)
    assert formatted(0.82, legend["ci95"], "accuracy") in table and "95% CI over seeds" in table


def test_heterogeneity_an_arm_that_misses_the_target_in_a_seed_has_no_median_time():
    heterogeneity = bench("heterogeneity")
    runs = _heterogeneity_runs(heterogeneity, {"uniform:fedavg": [82, 84, 80], "fedspine:fedavg": [83, 60, 81]})
    arm = heterogeneity.summarize(runs, [0, 1, 2], None)["arms"]["fedspine:fedavg"]
    assert arm["per_seed"][1]["time_to_target_s"] is None and arm["time_to_target_s_reached_in"] == 2
    assert arm["time_to_target_s"] is None and "not all" in heterogeneity.table(
        heterogeneity.summarize(runs, [0, 1, 2], None))
    with pytest.raises(ValueError, match="uniform:fedavg"):
        heterogeneity.parse_arms("legend:fedavg")
    arms = heterogeneity.parse_arms("legend,uniform:fedavg,legend:fedavg,uniform@p0.5:fedavg")
    assert [arm.label for arm in arms] == ["uniform:fedavg", "legend:fedavg", "uniform@p0.5:fedavg"]
    assert arms[2].prune_ratio == 0.5
    for bad in ("uniform:fedavg,legend@p0.5:fedavg", "uniform:fedavg,uniform@px:fedavg", "uniform:fedavg,nope:fedavg"):
        with pytest.raises(ValueError):
            heterogeneity.parse_arms(bad)


def test_fedpt_score_lines_carry_the_interval():
    fedpt = bench("fedpt")
    accuracy = {**fake_evaluation(69), "loss": 1.2345, "seconds": 12.3}
    line = fedpt.score_line("bbcnews: S tuned", accuracy)
    assert line.startswith("bbcnews: S tuned: accuracy ")
    assert formatted(0.69, accuracy["ci95"], "accuracy") in line and "loss 1.234" in line
    nll, tokens = [20.0, 31.0, 18.5, 40.0], [10, 12, 9, 15]
    ppl = math.exp(sum(nll) / sum(tokens))
    perplexity = {"metric": "perplexity", "value": ppl, "ci95": list(perplexity_interval(nll, tokens)),
                  "loss": sum(nll) / sum(tokens)}
    line = fedpt.score_line("chatterbot: L tuned directly", perplexity)
    assert f"perplexity {formatted(ppl, perplexity['ci95'], 'perplexity')}" in line
    counts = {"predicted": {"business": 30, "sport": 70}, "accuracy": 0.58,
              "ci95": list(accuracy_interval(58, 100)), "mean_log_prob_by_label": [-1.5, -2.0]}
    line = fedpt.prediction_line("proxy_alpha_1", counts)
    assert formatted(0.58, counts["ci95"], "accuracy") in line and "sport 70" in line


def test_prune_perplexity_keeps_per_window_nll_and_prints_the_interval():
    import torch

    prune = bench("prune_perplexity")

    class FakeLM(torch.nn.Module):
        """Logits from a fixed random table: enough to check the per-window NLL bookkeeping."""

        def __init__(self, vocab=11):
            super().__init__()
            self.table = torch.nn.Embedding(vocab, vocab)

        def forward(self, input_ids, labels=None):
            logits = self.table(input_ids)
            loss = None
            if labels is not None:    # the mean next-token loss the script used before keeping windows
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                         labels[:, 1:].reshape(-1))
            return type("Output", (), {"logits": logits, "loss": loss})()

    torch.manual_seed(0)
    model, windows = FakeLM(), torch.randint(0, 11, (7, 9))
    value, ci95 = prune.perplexity(model, windows, batch_size=3)
    with torch.no_grad():
        assert value == pytest.approx(math.exp(float(model(windows, labels=windows).loss)), rel=1e-5)
    assert ci95[0] <= value <= ci95[1] and ci95[0] < ci95[1]
    row = {"method": "width", "ratio": 0.0, "perplexity": value, "ci95": ci95, "params": 100, "params_before": 100,
           "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 64, "prune_s": 0.0, "eval_s": 1.0}
    table = prune.markdown_table([row, {**row, "ratio": 0.5, "perplexity": 2 * value, "ci95": [1.9 * value,
                                                                                                2.1 * value]}])
    assert "held-out ppl [95% CI]" in table
    assert f"| {formatted(value, ci95, 'perplexity')} | 1.00 |" in table
    assert f"[{1.9 * value:.2f}, {2.1 * value:.2f}]" in table


def test_dashboard_bench_seeds_evaluations_with_their_interval():
    dashboard_pages = bench("dashboard_pages")
    row = dashboard_pages.evaluation_row(1, 3, correct=73, loss=1.0, created_at=None)
    assert row["value"] == pytest.approx(0.73)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(accuracy_interval(73, 100))


def test_demo_summary_prints_both_scores_with_their_intervals():
    from pockettune.demo import held_out_lines

    report = fake_fleet_report(final_correct=83)
    lines = held_out_lines(report)
    assert "95% interval (Wilson)" in lines[0] and "100 articles" in lines[0]
    assert lines[1].endswith(formatted(0.40, accuracy_interval(40, 100), "accuracy"))
    assert lines[2].endswith(formatted(0.83, accuracy_interval(83, 100), "accuracy"))
    assert held_out_lines({**report, "rounds": []}) == []

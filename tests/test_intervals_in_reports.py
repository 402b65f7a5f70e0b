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


def test_heterogeneity_table_row_prints_the_final_accuracy_with_its_interval():
    heterogeneity = bench("heterogeneity")
    summary = heterogeneity.summarize(fake_fleet_report(final_correct=82), target=0.8)
    summary.update(virtual_speedup_vs_uniform=1.0, steady_speedup_vs_uniform=1.0)
    interval = accuracy_interval(82, 100)
    assert summary["final_accuracy"] == pytest.approx(0.82)
    assert summary["final_accuracy_ci95"] == pytest.approx(list(interval))        # written to the JSON
    assert summary["best_accuracy_ci95"] == pytest.approx(list(interval))
    assert len(summary["curve_ci95"]) == len(summary["curve"]) == 4
    row = heterogeneity.table_row("uniform", summary)
    assert formatted(0.82, interval, "accuracy") in row
    assert f"[{interval[0]:.3f}, {interval[1]:.3f}]" in row
    assert "[95% CI]" in heterogeneity.TABLE_HEADER
    assert len(row) == len(heterogeneity.TABLE_HEADER)                            # columns still line up


def test_heterogeneity_reads_reports_written_before_intervals():
    heterogeneity = bench("heterogeneity")
    summary = heterogeneity.summarize(fake_fleet_report(final_correct=82, with_intervals=False), target=0.8)
    summary.update(virtual_speedup_vs_uniform=None, steady_speedup_vs_uniform=None)
    assert summary["final_accuracy_ci95"] is None
    assert " 0.820 " in heterogeneity.table_row("uniform", summary) + " "


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

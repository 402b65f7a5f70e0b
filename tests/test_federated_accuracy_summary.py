"""bench/federated_accuracy.py's summary and plots, on a fake results dict (no model runs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("federated_accuracy_bench", REPO / "bench" / "federated_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _fake_run(values):
    """A fake federated report: round 0 at 0.6, then ``values``, with Wilson-like intervals;
    devices 0-13 of 20 have updates accepted (6 never train)."""
    return {"initial_evaluation": {"value": 0.6, "ci95": [0.55, 0.65], "num_examples": 334}, "spec": {"devices": 20},
            "rounds": [{"round": i + 1, "value": v, "ci95": [v - 0.03, v + 0.03], "num_examples": 334,
                        "virtual_seconds": 600.0, "accepted_devices": [f"d{(5 * i + k) % 14}" for k in range(5)]}
                       for i, v in enumerate(values)]}


def _fake_results():
    central = [{"seed": s, "value": v, "ci95": [v - 0.025, v + 0.025], "num_examples": 334,
                "curve": [{"step": 150, "value": v}]} for s, v in enumerate((0.93, 0.94, 0.92))]
    return {"settings": {"seeds": [0, 1, 2], "model": "smollm2-135m"}, "cpu": "fake CPU", "wall_seconds": 10.0,
            "federated": {"iid": [_fake_run([0.8, 0.9, 0.92]), _fake_run([0.82, 0.9, 0.93]), _fake_run([0.8, 0.91, 0.91])],
                          "dirichlet:0.5": [_fake_run([0.7, 0.85, 0.9]), _fake_run([0.75, 0.88, 0.92]),
                                            _fake_run([0.72, 0.86, 0.91])]},
            "centralized": {"per_seed": central, "zero_shot": {"value": 0.6, "ci95": [0.55, 0.65]}}}


def test_summary_has_the_documented_shape_and_a_t_interval_over_seeds():
    bench = _bench()
    summary = bench.summarize(_fake_results())
    assert summary["heldout_examples"] == 334 and summary["seeds"] == [0, 1, 2]
    assert set(summary["arms"]) == {"centralized", "iid", "dirichlet"}
    central = summary["arms"]["centralized"]
    assert central["accuracy"] == pytest.approx(0.93) and central["per_seed"] == [0.93, 0.94, 0.92]
    # Student t with 2 degrees of freedom: 4.303 * sd / sqrt(3), sd = 0.01
    half = 4.302652729911275 * 0.01 / 3 ** 0.5
    assert central["ci95"] == pytest.approx([0.93 - half, 0.93 + half])
    assert summary["arms"]["dirichlet"]["per_seed"] == [0.9, 0.92, 0.91]
    assert summary["relative_to_centralized"]["dirichlet"] == pytest.approx(0.91 / 0.93)
    json.dumps(summary)   # machine-readable as it is


def test_plots_are_written_with_bands(tmp_path):
    bench = _bench()
    paths = bench.plot(_fake_results(), tmp_path)
    assert [p.name for p in paths] == ["accuracy_by_round.png", "accuracy_by_virtual_time.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_per_round_tables_show_scored_rounds_and_the_lengths_since_the_last_row():
    bench = _bench()
    results = _fake_results()
    for runs in results["federated"].values():
        for run in runs:
            for r in run["rounds"]:
                r["real_seconds"] = 10.0 * r["round"]
            run["rounds"][1]["value"] = None       # round 2 not scored (a job's eval_every)
    text = bench.per_round_markdown(results)
    iid = text.split("### ")[1].splitlines()
    assert iid[0] == "Federated iid, held-out accuracy (%) per scored round"
    assert iid[3] == "| 0 | 60.0 | 60.0 | 60.0 | 60.0 | | |"
    assert [line.split(" | ")[0] for line in iid[4:] if line] == ["| 1", "| 3"]
    # round 3's row covers rounds 2 and 3: 10 virtual minutes each, (20 + 30) / 2 real seconds
    assert iid[5].endswith("| 10.0 | 25 |") and "92.0 | 93.0 | 91.0" in iid[5]
    assert "Federated dirichlet:0.5" in text


def test_help_and_bad_arguments_do_not_load_models(capsys):
    bench = _bench()
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--seeds", ""])
    assert exit_info.value.code == 2
    assert "at least one seed" in capsys.readouterr().err
    for bad, says in ((["--central-steps", "x"], "step counts"), (["--central-steps", "0,150"], "positive")):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
        assert says in capsys.readouterr().err
    assert bench.parse_args(["--central-steps", "300,150,300"]).central_steps == [150, 300]
    assert bench.parse_args([]).local_sampling == "class_balanced"


def test_summary_says_how_many_devices_trained():
    bench = _bench()
    summary = bench.summarize(_fake_results())
    assert summary["arms"]["iid"]["devices"] == [20, 20, 20]
    assert summary["arms"]["dirichlet"]["devices_trained"] == [14, 14, 14]

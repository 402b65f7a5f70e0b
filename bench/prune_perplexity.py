"""Held-out perplexity of a base model after structured pruning, per method and ratio.

Answers "how much does pruning cost before any recovery tuning?" for docs/pruning.md.
Every run is deterministic: fixed calibration windows (BBC News calibration split), fixed
evaluation windows (held-out split), no sampling. Each (method, ratio) starts from a freshly
loaded model, because pruning works in place. Ratio 0 is the same unpruned model for every
method, so it is measured once and shown on each method's row. Each perplexity comes with its
95% interval over the held-out windows (a percentile bootstrap that resamples whole windows,
``models/intervals.py``), written as ``ci95`` next to ``perplexity`` in the JSON rows.

    python bench/prune_perplexity.py --model smollm2-135m --ratios 0,0.25,0.5 --methods width,layers
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402

from models.corpora import bbc_news  # noqa: E402
from models.intervals import formatted, perplexity_interval  # noqa: E402
from models.pruning import PRUNING_METHODS, PruningConfig, calibration_ids, prune_model, token_windows  # noqa: E402
from models.registry import load_base_model  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="tiny, smollm2-135m or a local HF directory")
    parser.add_argument("--ratios", default="0,0.25,0.5", help="comma-separated pruning ratios")
    parser.add_argument("--methods", default=",".join(PRUNING_METHODS), help="comma-separated methods")
    parser.add_argument("--windows", type=int, default=64, help="held-out windows to evaluate")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per held-out window")
    parser.add_argument("--calibration-sequences", type=int, default=64)
    parser.add_argument("--calibration-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--no-refit", action="store_true",
                        help="width: slice the output projections without the least-squares refit")
    parser.add_argument("--json", type=Path, help="also write the rows here as JSON")
    return parser.parse_args(argv)


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int) -> tuple[float, list[float]]:
    """exp of the mean next-token loss over every predicted token of every window, and its 95%
    interval (bootstrap over windows: each window's summed NLL over its S - 1 targets)."""
    window_nll = []
    for start in range(0, windows.shape[0], batch_size):
        ids = windows[start:start + batch_size]
        logits = model(input_ids=ids).logits[:, :-1].float()   # position t predicts token t + 1
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                reduction="none")
        window_nll += nll.view(ids.shape[0], -1).double().sum(dim=1).tolist()
    window_tokens = [windows.shape[1] - 1] * len(window_nll)
    return math.exp(sum(window_nll) / sum(window_tokens)), list(perplexity_interval(window_nll, window_tokens))


def measure(args, method: str, ratio: float, calibration: torch.Tensor, heldout: torch.Tensor) -> dict:
    """Load, prune, evaluate one (method, ratio); times are wall-clock seconds on this machine."""
    model = load_base_model(args.model).model
    started = time.perf_counter()
    report = prune_model(model, PruningConfig(ratio, method), calibration, refit=not args.no_refit)
    prune_s = time.perf_counter() - started
    started = time.perf_counter()
    ppl, ci95 = perplexity(model, heldout, args.batch_size)
    eval_s = time.perf_counter() - started
    shape = report["config"]
    label = f"{method} (no refit)" if method == "width" and ratio > 0 and not report["refit"] else method
    return {"method": label, "ratio": ratio, "perplexity": ppl, "ci95": ci95,
            "params": report["params_after"], "params_before": report["params_before"],
            "layers": shape["num_hidden_layers"], "heads": shape["num_attention_heads"],
            "kv_heads": shape["num_key_value_heads"], "intermediate": shape["intermediate_size"],
            "dropped_layers": report["dropped_layers"], "prune_s": prune_s, "eval_s": eval_s}


def markdown_table(rows: list[dict]) -> str:
    base = next((r["perplexity"] for r in rows if r["ratio"] == 0), None)
    lines = ["| method | ratio | params (M) | params kept | layers | heads / KV heads | MLP channels "
             "| held-out ppl [95% CI] | x base ppl | prune s | eval s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs_base = f"{r['perplexity'] / base:.2f}" if base else "-"
        lines.append(
            f"| {r['method']} | {r['ratio']:g} | {r['params'] / 1e6:.1f} | {r['params'] / r['params_before']:.0%} "
            f"| {r['layers']} | {r['heads']} / {r['kv_heads']} | {r['intermediate']} "
            f"| {formatted(r['perplexity'], r.get('ci95'), 'perplexity')} | {vs_base} "
            f"| {r['prune_s']:.1f} | {r['eval_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    for method in methods:
        for ratio in ratios:
            PruningConfig(ratio, method)  # fail on a bad argument before minutes of work
    started = time.perf_counter()
    tokenizer = load_base_model(args.model).tokenizer
    calibration = calibration_ids(tokenizer, args.calibration_sequences, args.calibration_len)
    heldout = token_windows(tokenizer, [d.text for d in bbc_news("heldout")], args.windows, args.seq_len)

    rows, unpruned = [], None
    for method in methods:
        for ratio in ratios:
            if ratio == 0 and unpruned is not None:
                rows.append(dict(unpruned, method=method))  # r = 0 is the same model for every method
                continue
            row = measure(args, method, ratio, calibration, heldout)
            if ratio == 0:
                unpruned = row
            rows.append(row)
            print(f"{method} {ratio:g}: ppl {formatted(row['perplexity'], row['ci95'], 'perplexity')}, "
                  f"{row['params'] / 1e6:.1f}M params",
                  file=sys.stderr, flush=True)

    print("command: python " + " ".join(sys.argv))
    print(f"model {args.model}; held-out: {args.windows} windows x {args.seq_len} tokens of BBC News "
          f"(held-out split); calibration: {args.calibration_sequences} x {args.calibration_len} tokens "
          f"(calibration split); 95% intervals: percentile bootstrap over the held-out windows; "
          f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; total {time.perf_counter() - started:.0f} s\n")
    print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

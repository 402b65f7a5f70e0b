"""``pockettune export``: compile a (model, tier) into device training artifacts.

``--format`` names an artifact format (:mod:`export.formats`). ``--verify`` trains the result
in its device runtime, which is ``fleet/``'s (:mod:`fleet.verify`): export never imports fleet,
so the check arrives in the parsed arguments as ``verify_artifact``, set by ``fleet/cli.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from export.formats import DEFAULT_FORMAT, FORMATS, get_format
from models.lora import DEFAULT_TARGETS, KNOWN_TARGETS
from models.quantize import QUANTIZATIONS
from models.registry import PRESETS, UnknownModelError, is_known_model
from models.pruning import MAX_RATIO as MAX_PRUNE_RATIO
from models.pruning import PRUNING_METHODS as PRUNE_METHODS
from models.tier import KERNELS, Tier, TrainingHyperparameters, parse_rank_pattern

#: The ``--format`` help: each format's summary, the default marked.
_FORMAT_HELP = "; ".join(f"{name}: {get_format(name).summary}" + (" (default)" if name == DEFAULT_FORMAT else "")
                         for name in FORMATS)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="compile a model and tier into on-device training artifacts (ExecuTorch or ONNX Runtime)",
        description="Prune a base model, quantize its frozen weights, attach LoRA and compile an "
                    "ExecuTorch training program (.pte, LoRA weights in a .ptd) or ONNX Runtime training "
                    "artifacts (training/eval/optimizer models and a checkpoint) with its manifest. "
                    "The output directory appears only when complete.")
    p.add_argument("--model", required=True,
                   help=f"base model: {', '.join(PRESETS)}, or a local Hugging Face model directory")
    p.add_argument("--prune", type=float, default=0.0, metavar="R",
                   help=f"structured pruning ratio in [0, {MAX_PRUNE_RATIO}] (default 0)")
    p.add_argument("--prune-method", choices=PRUNE_METHODS, default="width",
                   help="width: attention heads and MLP channels; layers: whole decoder layers (default width)")
    p.add_argument("--lora-rank", type=int, default=8, metavar="N", help="LoRA rank (top layer's rank; default 8)")
    p.add_argument("--rank-pattern", default="uniform", metavar="P",
                   help="uniform, rising (ranks grow toward the output), or one rank per LoRA layer "
                        "bottom to top, e.g. 4,4,8,8 (default uniform)")
    p.add_argument("--lora-layers", type=int, default=2, metavar="K", help="LoRA in the last K layers (default 2)")
    p.add_argument("--lora-targets", default=",".join(DEFAULT_TARGETS), metavar="M,M",
                   help=f"modules that get LoRA, from {','.join(KNOWN_TARGETS)} (default {','.join(DEFAULT_TARGETS)})")
    p.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                   help="frozen base linears: none (fp32) or int8 weight-only (default none)")
    p.add_argument("--kernels", choices=KERNELS, default="xnnpack",
                   help="xnnpack: frozen matmuls and element-wise ops on XNNPACK (SIMD, threadpool); "
                        "portable: ExecuTorch's reference kernels only (default xnnpack)")
    p.add_argument("--prefix-cache", action="store_true",
                   help="also ship a prefix program for the layers below the LoRA layers, and train only "
                        "the top on cached prefix outputs (devices compute the prefix once per example)")
    p.add_argument("--loss-positions", type=int, default=None, metavar="K",
                   help="label-position head: compute the LM head (and the loss) only at the first K labelled "
                        "positions of each row instead of at every position, for tasks whose loss covers a "
                        "few tokens (bbcnews: K=1 on SmolLM2, whose topic words are single tokens). Same "
                        "inputs and the same loss; trainers refuse a batch with a row labelled at more than "
                        "K positions. In [1, seq-1]; default: every position")
    p.add_argument("--format", dest="artifact_format", choices=FORMATS, default=DEFAULT_FORMAT, help=_FORMAT_HELP)
    p.add_argument("--ort-format", action="store_true",
                   help="with --format onnxruntime: also write the models in .ort format (minimal mobile builds)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="device optimizer (default sgd); ONNX Runtime artifacts compile it in, and their sgd "
                        "has no momentum or weight decay")
    p.add_argument("--weight-decay", type=float, default=0.0, metavar="W", help="weight decay (default 0)")
    p.add_argument("--batch", type=int, default=4, metavar="B", help="batch size compiled into the program (default 4)")
    p.add_argument("--seq", type=int, default=128, metavar="S", help="sequence length compiled into the program (default 128)")
    p.add_argument("--lr", type=float, default=TrainingHyperparameters.lr,
                   help=f"learning rate recorded in the manifest (default {TrainingHyperparameters.lr})")
    p.add_argument("--local-steps", type=int, default=TrainingHyperparameters.local_steps,
                   help=f"local steps per round recorded in the manifest (default {TrainingHyperparameters.local_steps})")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (must not exist, or use --force)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--verify", type=int, default=0, metavar="N",
                   help="after export, train N steps in the artifact's runtime and in eager PyTorch from the "
                        "same start on the BBC News train split (with --loss-positions: the bbcnews task's "
                        "topic-word labels) and print JSON comparing them")
    p.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")
    p.set_defaults(func=run)


def tier_from_args(args: argparse.Namespace) -> Tier:
    """The tier the arguments describe, validated (``UsageError`` on a bad value)."""
    from models.console import UsageError

    try:
        tier = Tier(prune_ratio=args.prune, prune_method=args.prune_method, lora_rank=args.lora_rank,
                    rank_pattern=parse_rank_pattern(args.rank_pattern), lora_layers=args.lora_layers,
                    lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
                    quantize=args.quantize, batch=args.batch, seq=args.seq, kernels=args.kernels,
                    prefix_cache=args.prefix_cache, loss_positions=args.loss_positions,
                    train=TrainingHyperparameters(optimizer=args.optimizer, lr=args.lr, local_steps=args.local_steps,
                                                  weight_decay=args.weight_decay))
        tier.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return tier


def run(args: argparse.Namespace) -> int:
    from models.console import UsageError

    if not is_known_model(args.model):
        raise UsageError(f"unknown model {args.model!r}: use one of {', '.join(PRESETS)} or a directory "
                         "with a Hugging Face config.json")
    if args.verify < 0:
        raise UsageError(f"--verify must be >= 0, got {args.verify}")
    export_format = get_format(args.artifact_format)
    if args.ort_format and "ort_format" not in export_format.export_options:
        takers = [name for name in FORMATS if "ort_format" in get_format(name).export_options]
        raise UsageError(f"--ort-format applies to --format {' or '.join(takers)} only")
    verify_artifact = getattr(args, "verify_artifact", None)
    if args.verify and verify_artifact is None:
        raise UsageError("--verify needs the device runtimes (fleet/), which this command line was built without")
    tier = tier_from_args(args)

    from export.pipeline import export_artifact
    from tqdm import tqdm

    stages = export_format.stages
    with tqdm(total=len(stages), desc="export", unit="stage", disable=args.no_progress, file=sys.stderr) as bar:
        def on_stage(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.n = stages.index(stage)
            bar.refresh()

        try:
            training, manifest = export_artifact(args.model, tier, args.out, replace=args.force, on_stage=on_stage,
                                                 artifact_format=args.artifact_format, ort_format=args.ort_format)
        except (ValueError, UnknownModelError, FileExistsError, PermissionError, NotADirectoryError) as exc:
            raise UsageError(str(exc)) from None
        bar.n = len(stages)
        bar.refresh()

    device_bytes = sum(f["size"] for f in manifest["files"].values() if f["device"])
    print(f"exported {args.model} -> {args.out} ({device_bytes / 2**20:.1f} MiB for the device, "
          f"{manifest['lora']['trainable_parameters']} trainable LoRA parameters, "
          f"{manifest['export']['total_seconds']:.1f} s)", file=sys.stderr)
    if args.verify:
        try:
            report = verify_artifact(training, args.out, args.verify)
        except ValueError as exc:  # batches that do not fit the label-position head
            raise UsageError(f"exported {args.out}, but could not verify it: {exc}") from None
        print(json.dumps(report, indent=2))
    return 0

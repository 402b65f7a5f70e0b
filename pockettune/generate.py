"""``pockettune generate``: continue a prompt with a large model proxy-tuned by a federated small one.

The large model L is never trained: at every step its logits are shifted by what federated
tuning changed in the small model S, ``logits_L + alpha * (logits_S_tuned - logits_S_base)``
(``models/proxy.py``). S is a base model (preset or Hugging Face directory) or an exported
artifact directory (its pruned, quantized training model, rebuilt as the coordinator's
evaluator does), and ``--adapter`` the PEFT adapter directory federated tuning produced
(``GET /api/v1/jobs/<id>/adapter``, unzipped, or the demo's ``final_adapter``).
"""

from __future__ import annotations

import json
from pathlib import Path

from models.proxy import MAX_ALPHA, MAX_NEW_TOKENS, GenerationSettings

DESCRIPTION = __doc__.split("\n\n")[1].replace("\n", " ")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="generate text with a large model steered by a federated small model (proxy-tuning)",
        description=DESCRIPTION)
    p.add_argument("--large", required=True, metavar="L",
                   help="the large base model: tiny, smollm2-135m or a Hugging Face model directory")
    p.add_argument("--small", required=True, metavar="S",
                   help="the small model the adapter was trained on: a preset, a Hugging Face model directory, "
                        "or an artifact directory (with manifest.json; e.g. a pruned tier's)")
    p.add_argument("--adapter", required=True, type=Path, metavar="DIR",
                   help="PEFT adapter directory of the tuned small model (adapter_config.json + safetensors)")
    p.add_argument("--alpha", type=float, default=1.0, metavar="A",
                   help=f"strength of the small model's offset, 0 (L alone) to {MAX_ALPHA:g} (default 1)")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                   help=f"tokens to generate, 1 to {MAX_NEW_TOKENS} (default 64; stops earlier at end-of-sequence)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="0 decodes greedily (default); above 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass in (0, 1] (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (tokens, timings, settings)")
    p.set_defaults(func=run)


def load_small(small: str, adapter: Path):
    """S with the adapter loaded, and its tokenizer: from an artifact directory or a base model."""
    from models.proxy import load_small_with_adapter

    if (Path(small) / "manifest.json").is_file():
        from export.server_model import load_artifact_model, set_adapter_tensors
        from models.adapters import load_adapter

        artifact = load_artifact_model(Path(small))
        tensors, _ = load_adapter(adapter)
        set_adapter_tensors(artifact.peft_model, tensors)
        return artifact.peft_model, artifact.tokenizer
    return load_small_with_adapter(small, adapter)


def run(args) -> int:
    import torch
    from transformers.utils import logging as transformers_logging

    from models.proxy import GenerationSettingsError, ProxyTunedLM, TokenizerMismatchError
    from models.registry import UnknownModelError, is_known_model, load_base_model
    from models.console import UsageError

    settings = GenerationSettings(alpha=args.alpha, max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    try:
        settings.validate()
    except GenerationSettingsError as exc:
        raise UsageError(str(exc)) from None
    if not args.prompt.strip():
        raise UsageError("--prompt is empty: give some text to continue")
    if not (args.adapter / "adapter_config.json").is_file():
        raise UsageError(f"--adapter {args.adapter} is not a PEFT adapter directory (no adapter_config.json); "
                         "download one with GET /api/v1/jobs/<id>/adapter and unzip it")
    for flag, name in (("--large", args.large), ("--small", args.small)):
        if not is_known_model(name) and not (Path(name) / "manifest.json").is_file():
            raise UsageError(f"{flag} {name!r} is not a preset (tiny, smollm2-135m), a Hugging Face model "
                             "directory or an artifact directory")
    # Weight-loading progress bars would bury the one line an error is, and the output.
    transformers_logging.disable_progress_bar()
    try:
        large = load_base_model(args.large)
        small_model, small_tokenizer = load_small(args.small, args.adapter)
        proxy = ProxyTunedLM.from_peft(large.model, large.tokenizer, small_model, small_tokenizer, alpha=args.alpha)
        with torch.inference_mode():
            result = proxy.generate(args.prompt, settings)
    except (UnknownModelError, TokenizerMismatchError, GenerationSettingsError) as exc:
        raise UsageError(str(exc)) from None
    except (ValueError, FileNotFoundError) as exc:      # adapter does not fit S, incomplete artifact
        raise UsageError(str(exc).splitlines()[0]) from None
    if args.json:
        print(json.dumps({"large": args.large, "small": args.small, "adapter": str(args.adapter),
                          **{k: v for k, v in vars(settings).items()}, **result.to_dict()}, indent=2))
    else:
        print(args.prompt + result.text)
    return 0

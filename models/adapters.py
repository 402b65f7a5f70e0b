"""LoRA adapters on disk, in PEFT's own format.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` with the
keys PEFT writes (``base_model.model.….lora_A.weight``), so any adapter PocketTune produces,
a device's update or an aggregated global one, loads with ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


def peft_config_dict(peft_model, base_model_name: str | None = None) -> dict:
    """The JSON-ready adapter config of a PEFT model (what ``save_pretrained`` would write)."""
    config = peft_model.peft_config["default"].to_dict()
    for key, value in list(config.items()):
        if isinstance(value, set):
            config[key] = sorted(value)
    if base_model_name is not None:
        config["base_model_name_or_path"] = base_model_name
    return config


def save_adapter(tensors: dict[str, torch.Tensor], config: dict, out_dir: Path) -> Path:
    """Write PEFT-keyed LoRA tensors and their config as a PEFT adapter directory."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in sorted(tensors.items())},
              str(out_dir / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
    (out_dir / ADAPTER_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def load_adapter(adapter_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a PEFT adapter directory: (tensors by PEFT key, config)."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS_FILE))
    config = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text())
    return dict(sorted(tensors.items())), config

"""A device tier: everything that decides the shape and cost of one training artifact.

A tier is a small frozen description (the PEFT idea of keeping a method's *config* apart from
the code that applies it): the exporter compiles (base model, tier) into artifacts, the
manifest records it, and the coordinator's schedulers choose tiers per device. Validation
lives here so that the CLI, the coordinator's API and the schedulers refuse the same bad
values with the same messages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from models.lora import DEFAULT_TARGETS, RANK_PATTERNS, check_targets, rank_schedule
from models.pruning import PruningConfig
from models.quantize import QUANTIZATIONS

#: ``sgd``: plain SGD (optionally with momentum), what ExecuTorch's training runtime ships;
#: ``adamw``: decoupled weight decay Adam (``torch.optim.AdamW`` semantics), stepped by the
#: compiled optimizer model under ONNX Runtime and by PocketTune on the ExecuTorch runtime's tensors.
OPTIMIZERS = ("sgd", "adamw")
#: Which kernels run a program on the device. ``xnnpack``: frozen matmuls and element-wise work
#: delegated to XNNPACK (SIMD, the runtime's threadpool); ``portable``: every op on ExecuTorch's
#: portable kernels (the slow reference).
KERNELS = ("xnnpack", "portable")


@dataclass(frozen=True)
class TrainingHyperparameters:
    """How a device trains the artifact: the optimizer and its settings, a learning rate, local steps.

    ``betas`` and ``eps`` matter only for ``adamw``; ``momentum`` only for ``sgd``.
    """

    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    local_steps: int = 20
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; the on-device runtime offers {OPTIMIZERS}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.local_steps <= 0:
            raise ValueError(f"local steps must be positive, got {self.local_steps}")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"adamw betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"adamw eps must be positive, got {self.eps}")
        if self.optimizer == "adamw" and self.momentum:
            raise ValueError("momentum applies to sgd only; adamw's first moment is betas[0]")


@dataclass(frozen=True)
class Tier:
    """Pruning, LoRA layout, base quantization and the fixed [batch, seq] of one artifact."""

    prune_ratio: float = 0.0
    prune_method: str = "width"
    lora_rank: int = 8
    rank_pattern: str | tuple[int, ...] = "uniform"
    lora_layers: int = 2
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    quantize: str = "none"
    batch: int = 4
    seq: int = 128
    train: TrainingHyperparameters = field(default_factory=TrainingHyperparameters)
    kernels: str = "xnnpack"
    #: Frozen-prefix caching: ship a prefix inference program and train only the layers from the
    #: lowest LoRA layer up on cached prefix outputs (worth it when LoRA sits in the last few layers).
    prefix_cache: bool = False

    @property
    def pruning(self) -> PruningConfig:
        """The pruning part of the tier, in the form ``models.pruning`` takes."""
        return PruningConfig(ratio=self.prune_ratio, method=self.prune_method)

    def validate(self, num_hidden_layers: int | None = None) -> None:
        """Raise ``ValueError`` naming the first bad field; with the model's depth, check LoRA depth too."""
        self.pruning  # PruningConfig validates ratio and method
        rank_schedule(self.lora_rank, self.lora_layers, self.rank_pattern)  # rank, depth, pattern
        if num_hidden_layers is not None and self.lora_layers > num_hidden_layers:
            raise ValueError(f"{self.lora_layers} LoRA layers requested but the model has only "
                             f"{num_hidden_layers} layers")
        check_targets(self.lora_targets)
        if self.quantize not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization {self.quantize!r}; use one of {', '.join(QUANTIZATIONS)}")
        if self.batch <= 0:
            raise ValueError(f"batch must be a positive integer, got {self.batch}")
        if self.seq < 2:
            raise ValueError(f"sequence length must be at least 2 (next-token loss), got {self.seq}")
        if self.kernels not in KERNELS:
            raise ValueError(f"unknown kernels {self.kernels!r}; use one of {', '.join(KERNELS)}")
        if not isinstance(self.prefix_cache, bool):
            raise ValueError(f"prefix_cache must be true or false, got {self.prefix_cache!r}")
        if self.prefix_cache and num_hidden_layers is not None and self.lora_layers >= num_hidden_layers:
            raise ValueError("prefix caching needs a frozen prefix: LoRA is in every layer "
                             f"({self.lora_layers} of {num_hidden_layers}); use fewer LoRA layers or no prefix cache")
        self.train.validate()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        d["train"]["betas"] = list(self.train.betas)
        if not isinstance(self.rank_pattern, str):
            d["rank_pattern"] = list(self.rank_pattern)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Tier":
        d = dict(d)
        if "train" in d:
            train = dict(d["train"])
            if "betas" in train:
                train["betas"] = tuple(float(b) for b in train["betas"])
            d["train"] = TrainingHyperparameters(**train)
        if "lora_targets" in d:
            d["lora_targets"] = tuple(d["lora_targets"])
        if not isinstance(d.get("rank_pattern", "uniform"), str):
            d["rank_pattern"] = tuple(int(r) for r in d["rank_pattern"])
        return cls(**d)


def parse_rank_pattern(text: str) -> str | tuple[int, ...]:
    """``uniform``, ``rising`` or ``4,4,8,8`` (one rank per LoRA layer, bottom to top)."""
    text = text.strip()
    if text in RANK_PATTERNS:
        return text
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"rank pattern {text!r} is neither {' nor '.join(RANK_PATTERNS)} "
                         "nor a comma-separated list of integers") from None

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
from models.lr_schedule import LR_SCHEDULES, lr_for_round
from models.pruning import PruningConfig
from models.quantize import QUANTIZATIONS

#: ``sgd``: plain SGD (optionally with momentum), what ExecuTorch's training runtime ships;
#: ``adamw``: decoupled weight decay Adam (``torch.optim.AdamW`` semantics), stepped by the
#: compiled optimizer model under ONNX Runtime and by PocketTune on the ExecuTorch runtime's tensors.
OPTIMIZERS = ("sgd", "adamw")
#: How a device picks a round's examples from its local data (:func:`fleet.data.round_examples`).
#: ``sequential``: walk the data in order, wrapping around; ``class_balanced``: take the device's
#: classes in turn, each walked in order (labelled tasks only). Under label skew (a Dirichlet
#: partition) a sequential walk gives a device's majority class most of every local step, which
#: pulls each update towards that device's label prior; the balanced walk gives every class the
#: device has an equal share, the re-sampling remedy for class imbalance (see docs/results.md for
#: what it was measured to do).
LOCAL_SAMPLINGS = ("sequential", "class_balanced")
#: Which kernels run a program on the device. ``xnnpack``: frozen matmuls and element-wise work
#: delegated to XNNPACK (SIMD, the runtime's threadpool); ``portable``: every op on ExecuTorch's
#: portable kernels (the slow reference).
KERNELS = ("xnnpack", "portable")


#: Upper bounds of a tier's integers: far beyond any phone, and small enough that every
#: product the coordinator forms from them (examples = steps x batch, FLOPs) stays finite.
MAX_RANK = 4096
MAX_LORA_LAYERS = 1024
MAX_BATCH = 1024
MAX_SEQ = 65_536
MAX_LOCAL_STEPS = 1_000_000
#: Upper bounds of the optimizer's numbers (a learning rate of 100 already diverges).
MAX_LR = 100.0
MAX_WEIGHT_DECAY = 100.0


def check_int(name: str, value, minimum: int, maximum: int) -> None:
    """``ValueError`` unless ``value`` is a true integer (not a bool, not 2.5) in range."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValueError(f"{name} must be an integer in [{minimum}, {maximum}], got {_shown(value)}")


def check_number(name: str, value, minimum: float, maximum: float, *, exclusive_minimum: bool = False) -> None:
    """``ValueError`` unless ``value`` is a finite number in range (NaN and infinity refused)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and isinstance(value, int):
        ok = abs(value) <= 2**1000  # float() of a longer integer overflows
    if ok:
        number = float(value)
        ok = minimum <= number <= maximum and not (exclusive_minimum and number == minimum)
    if not ok:
        low = "(" if exclusive_minimum else "["
        raise ValueError(f"{name} must be a finite number in {low}{minimum:g}, {maximum:g}], got {_shown(value)}")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


@dataclass(frozen=True)
class TrainingHyperparameters:
    """How a device trains the artifact: the optimizer and its settings, a learning rate, local steps.

    ``betas`` and ``eps`` matter only for ``adamw``; ``momentum`` only for ``sgd``.
    ``lr_schedule`` and ``lr_min`` (a fraction of ``lr``) say how a job's rate moves across its
    rounds (:mod:`models.lr_schedule`); a device is always told one plain rate for its round.
    ``local_sampling`` (one of :data:`LOCAL_SAMPLINGS`) is how it picks a round's examples.
    """

    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    local_steps: int = 20
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_schedule: str = "constant"
    lr_min: float = 0.0
    local_sampling: str = "sequential"

    def lr_for_round(self, round_number: int, rounds: int) -> float:
        """The learning rate of round ``round_number`` (1-based) of a ``rounds``-round job."""
        return lr_for_round(self.lr, self.lr_schedule, self.lr_min, round_number, rounds)

    def validate(self) -> None:
        if not isinstance(self.optimizer, str) or self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {_shown(self.optimizer)}; the on-device runtime offers {OPTIMIZERS}")
        check_number("learning rate", self.lr, 0.0, MAX_LR, exclusive_minimum=True)
        check_number("momentum", self.momentum, 0.0, 1.0)
        if self.momentum == 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        check_number("weight decay", self.weight_decay, 0.0, MAX_WEIGHT_DECAY)
        check_int("local steps", self.local_steps, 1, MAX_LOCAL_STEPS)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"adamw betas must be two numbers in [0, 1), got {_shown(self.betas)}")
        for beta in self.betas:
            check_number("adamw beta", beta, 0.0, 1.0)
            if beta == 1.0:
                raise ValueError(f"adamw betas must be two numbers in [0, 1), got {self.betas}")
        check_number("adamw eps", self.eps, 0.0, 1.0, exclusive_minimum=True)
        if self.optimizer == "adamw" and self.momentum:
            raise ValueError("momentum applies to sgd only; adamw's first moment is betas[0]")
        if not isinstance(self.lr_schedule, str) or self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {_shown(self.lr_schedule)}; use one of {LR_SCHEDULES}")
        check_number("lr_min (a fraction of lr)", self.lr_min, 0.0, 1.0)
        if not isinstance(self.local_sampling, str) or self.local_sampling not in LOCAL_SAMPLINGS:
            raise ValueError(f"unknown local sampling {_shown(self.local_sampling)}; use one of {LOCAL_SAMPLINGS}")


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
    #: Label-position head: the compiled loss runs the LM head only on the hidden states of the
    #: first ``loss_positions`` labelled positions of each row; ``None`` runs it at every position.
    #: Worth it for tasks whose loss covers a few tokens (a topic word: 1 SmolLM2 token), where
    #: the head is about half of a step's work. Trainers refuse batches with a row labelled at
    #: more positions (``models.batching.check_loss_positions``): the program cannot see them.
    loss_positions: int | None = None
    #: Iterative prune-and-tune (FedSpine): the sha256 of a LoRA adapter (an
    #: ``adapter_model.safetensors`` over the unpruned base) merged into the base to choose what
    #: pruning keeps, so the cut follows the *tuned* model; the kept weights are still the base's.
    #: ``None`` prunes by the base model alone. The exporter must be given the adapter's tensors.
    prune_importance_adapter: str | None = None

    @property
    def pruning(self) -> PruningConfig:
        """The pruning part of the tier, in the form ``models.pruning`` takes."""
        return PruningConfig(ratio=self.prune_ratio, method=self.prune_method)

    def validate(self, num_hidden_layers: int | None = None) -> None:
        """Raise ``ValueError`` naming the first bad field; with the model's depth, check LoRA depth too."""
        self.pruning  # PruningConfig validates ratio and method
        check_int("LoRA rank", self.lora_rank, 1, MAX_RANK)
        check_int("LoRA layers", self.lora_layers, 1, MAX_LORA_LAYERS)
        if not isinstance(self.rank_pattern, str):
            if not isinstance(self.rank_pattern, (tuple, list)):
                raise ValueError(f"rank pattern must be a name or a list of ranks, got {_shown(self.rank_pattern)}")
            for rank in self.rank_pattern:
                check_int("every rank in the rank pattern", rank, 1, MAX_RANK)
        rank_schedule(self.lora_rank, self.lora_layers, self.rank_pattern)  # rank, depth, pattern
        if num_hidden_layers is not None and self.lora_layers > num_hidden_layers:
            raise ValueError(f"{self.lora_layers} LoRA layers requested but the model has only "
                             f"{num_hidden_layers} layers")
        if not all(isinstance(target, str) for target in self.lora_targets):
            raise ValueError(f"LoRA targets must be module names, got {_shown(list(self.lora_targets))}")
        check_targets(self.lora_targets)
        if not isinstance(self.quantize, str) or self.quantize not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization {_shown(self.quantize)}; use one of {', '.join(QUANTIZATIONS)}")
        check_int("batch", self.batch, 1, MAX_BATCH)
        if isinstance(self.seq, int) and not isinstance(self.seq, bool) and self.seq < 2:
            raise ValueError(f"sequence length must be at least 2 (next-token loss), got {self.seq}")
        check_int("sequence length", self.seq, 2, MAX_SEQ)
        if not isinstance(self.kernels, str) or self.kernels not in KERNELS:
            raise ValueError(f"unknown kernels {self.kernels!r}; use one of {', '.join(KERNELS)}")
        if not isinstance(self.prefix_cache, bool):
            raise ValueError(f"prefix_cache must be true or false, got {self.prefix_cache!r}")
        if self.loss_positions is not None:
            check_int("loss positions", self.loss_positions, 1, self.seq - 1)
        if self.prune_importance_adapter is not None:
            if not (isinstance(self.prune_importance_adapter, str) and len(self.prune_importance_adapter) == 64
                    and all(c in "0123456789abcdef" for c in self.prune_importance_adapter)):
                raise ValueError("prune_importance_adapter must be the lowercase hex sha256 of an adapter, got "
                                 f"{_shown(self.prune_importance_adapter)}")
            if not self.prune_ratio:
                raise ValueError("prune_importance_adapter chooses what pruning keeps; it needs a prune_ratio above 0")
        if self.prefix_cache and num_hidden_layers is not None and self.lora_layers >= num_hidden_layers:
            raise ValueError("prefix caching needs a frozen prefix: LoRA is in every layer "
                             f"({self.lora_layers} of {num_hidden_layers}); use fewer LoRA layers or no prefix cache")
        self.train.validate()

    def to_dict(self) -> dict:
        """The tier as JSON. ``loss_positions`` (and a learning-rate schedule) appears only when set: a tier without it keeps
        exactly the dict (hence the artifact key, the protocol's tier objects and the stored
        jobs' tiers) it had before the field existed."""
        d = asdict(self)
        for key in ("loss_positions", "prune_importance_adapter"):
            if d[key] is None:
                del d[key]
        for key in ("lr_schedule", "lr_min", "local_sampling"):    # likewise for a job that keeps the defaults
            if d["train"][key] == getattr(TrainingHyperparameters, key):
                del d["train"][key]
        d["lora_targets"] = list(self.lora_targets)
        d["train"]["betas"] = list(self.train.betas)
        if not isinstance(self.rank_pattern, str):
            d["rank_pattern"] = list(self.rank_pattern)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Tier":
        """The tier a JSON object describes (``ValueError``/``TypeError`` for a malformed one;
        values are kept as given, for :meth:`validate` to check: 2.5 stays 2.5, not 2)."""
        d = dict(d)
        if "train" in d:
            if not isinstance(d["train"], dict):
                raise ValueError(f"train must be an object of training settings, got {_shown(d['train'])}")
            train = dict(d["train"])
            if isinstance(train.get("betas"), list):
                train["betas"] = tuple(train["betas"])
            d["train"] = TrainingHyperparameters(**train)
        if "lora_targets" in d:
            if not isinstance(d["lora_targets"], (list, tuple)):
                raise ValueError(f"lora_targets must be a list of module names, got {_shown(d['lora_targets'])}")
            d["lora_targets"] = tuple(d["lora_targets"])
        if isinstance(d.get("rank_pattern"), list):
            d["rank_pattern"] = tuple(d["rank_pattern"])
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

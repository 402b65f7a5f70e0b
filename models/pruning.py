"""Structured pruning of Llama-architecture causal LMs: fewer heads, MLP channels or layers.

A phone that cannot hold or train the full base model can still take part in the federation
with a smaller one. Pruning here is *structured*: whole attention heads, whole MLP channels or
whole decoder layers are cut out, so the result is an ordinary, smaller ``LlamaForCausalLM``
whose shape a standard ``LlamaConfig`` describes. Nothing needs a sparse kernel, the exporter
compiles it like any other model, and LoRA adapters attach to it the usual way.

Two methods (:data:`PRUNING_METHODS`):

``width``
    Every decoder layer keeps ``1 - ratio`` of its MLP intermediate channels and about
    ``1 - ratio`` of its attention parameters (see :func:`attention_shape` for how the ratio
    is rounded to whole heads). Which channels and heads survive is decided per layer from
    importance scores, but *how many* is the same in every layer, because a ``LlamaConfig``
    has a single ``intermediate_size``, ``num_attention_heads`` and ``num_key_value_heads``.
``layers``
    Whole decoder layers are removed: those that change the hidden state least on
    calibration text (see :func:`layer_importance`). The first and the last layer always stay.

Out of scope: shrinking the residual stream (``hidden_size``). It would touch the embeddings,
every norm and every projection at once, and the tied embedding / LM head with them.

Importance scores (why "output energy"): a head or an MLP channel matters in proportion to
how much it *writes into the residual stream* on real text. For MLP channel ``j`` that is
``||x_j||^2 * ||W_down[:, j]||^2`` (the squared norm of its contribution over all calibration
tokens, exact because the contribution is an outer product); for a head it is
``trace(W_o,h G_h W_o,h^T)`` with ``G_h`` the Gram matrix of the head's attention output, again
exactly the energy of what the head adds. This is the structured form of the activation-aware
(Wanda-style ``|W| * ||X||``) criterion. It needs only forward passes (no gradients, so it fits
the memory of the machines that prepare models) and it is not fooled by large weights that
real inputs never excite (a channel whose gate never opens scores zero). On SmolLM2-135M at
ratio 0.25 (no refit) it gave held-out perplexity 214 against 249 for first-order Taylor
scores (``sum |w * dL/dw|`` per structure, whose gradients from a few thousand calibration
tokens are noisy), 1,388 for the signed Taylor estimate and 1.2 million for weight norms;
at 0.5 the gap was wider (621 against 12,632 and more); ``docs/pruning.md`` has the table.
Without calibration data the scores fall back to weight norms (:func:`magnitude_importance`)
so that pruning still runs, but that ranking is poor: always pass calibration ids.

Refit: the same calibration pass records the full second-moment matrices of what ``down_proj``
and ``o_proj`` read, so after choosing what to keep, those two projections are refit by
ridge-regularized least squares to reproduce the unpruned layer's output from the kept
channels and heads alone (:func:`refit_output_weight`; the OBS / FLAP family of one-shot
compensation, but closed form and with no new parameters, so the config stays standard). On
SmolLM2-135M at ratio 0.25 it cut held-out perplexity from 212 to 62 with 64 x 128
calibration tokens (with 16 x 128 it reached only 97, hence the default of 64). It is one-shot: statistics
come from the unpruned model, so later layers are refit for inputs that pruning earlier layers
has shifted a little; a sequential pass would be more exact at 30x the cost.

Pruning must happen before LoRA adapters are attached or weights are quantized: only plain
``nn.Linear`` projections are cut.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

PRUNING_METHODS = ("width", "layers")
MAX_RATIO = 0.9


# --- description: what to prune, serializable into the manifest -------------------------------

@dataclass(frozen=True)
class PruningConfig:
    """How much to prune and how: the description a manifest records.

    ``ratio`` is the fraction removed: for ``width`` of each layer's MLP channels and (rounded
    to whole heads, see :func:`attention_shape`) attention weights; for ``layers`` of the
    decoder layers. Embeddings, norms and the LM head are never pruned, so the whole model
    shrinks by less than ``ratio``.
    """

    ratio: float = 0.0
    method: str = "width"

    def __post_init__(self):
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)):
            raise ValueError(f"pruning ratio must be a number in [0, {MAX_RATIO}], got {str(self.ratio)[:80]!r}")
        if not 0 <= self.ratio <= MAX_RATIO:  # also rejects NaN; compared before float(), which a huge int overflows
            raise ValueError(f"pruning ratio must be in [0, {MAX_RATIO}], got {str(self.ratio)[:80]}")
        if self.method not in PRUNING_METHODS:
            raise ValueError(f"unknown pruning method {self.method!r}; use one of "
                             f"{', '.join(PRUNING_METHODS)}")
        object.__setattr__(self, "ratio", float(self.ratio))

    def to_dict(self) -> dict:
        """Plain dict for JSON manifests."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PruningConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error rather than silently dropped."""
        unknown = set(data) - {"ratio", "method"}
        if unknown:
            raise ValueError(f"unknown pruning config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


# --- calibration data ---------------------------------------------------------------------------

def token_windows(tokenizer, texts: list[str], n_windows: int, seq_len: int) -> torch.Tensor:
    """``n_windows`` windows of ``seq_len`` tokens, evenly spaced over the concatenated texts.

    Texts are joined with the tokenizer's EOS token into one stream and the windows are spread
    over all of it, so a corpus sorted by topic contributes every topic rather than only the
    first. Windows do not overlap when the stream is long enough. Deterministic for a given
    tokenizer and text list.
    """
    if n_windows < 1 or seq_len < 1:
        raise ValueError("n_windows and seq_len must be positive")
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = [tok for ids in encoded for tok in (*ids, *separator)]
    if len(stream) < seq_len:
        raise ValueError(f"texts give {len(stream)} tokens, fewer than one window of {seq_len}")
    span = len(stream) - seq_len
    starts = [k * span // max(n_windows - 1, 1) for k in range(n_windows)]
    return torch.tensor([stream[s:s + seq_len] for s in starts], dtype=torch.long)


def calibration_ids(tokenizer, n_sequences: int = 64, seq_len: int = 128) -> torch.Tensor:
    """Calibration token ids ``[n_sequences, seq_len]`` from the BBC News calibration split.

    The calibration split is disjoint from the training and held-out splits, so importance is
    never measured on the text perplexity is later reported on. 64 x 128 tokens (not fewer)
    because the refit solves for ``intermediate_size`` unknowns per output row: with 16 x 128
    it has fewer tokens than SmolLM2's 1,536 channels and leans on its ridge penalty
    (held-out perplexity at width 0.25: 97 against 60 on 32 windows).
    """
    from models.corpora import bbc_news

    return token_windows(tokenizer, [d.text for d in bbc_news("calibration")], n_sequences, seq_len)


# --- importance scores --------------------------------------------------------------------------

@dataclass
class WidthImportance:
    """Per layer: one score per MLP intermediate channel and one per query head (higher = keep)."""

    mlp: list[torch.Tensor]
    heads: list[torch.Tensor]
    source: str  # "activation-energy" or "weight-magnitude"


@dataclass
class ActivationStats:
    """Second moments of what each layer's two output projections read, over calibration tokens.

    ``mlp[i]`` is ``sum_t x_t x_t^T`` for the input of layer ``i``'s ``down_proj`` (the gated
    intermediate activations), ``attention[i]`` the same for ``o_proj`` (the concatenated head
    outputs). Their diagonals give the importance scores; the full matrices let the pruned
    projections be refit (see :func:`refit_output_weight`). float64 on the CPU: about 650 MB
    for SmolLM2-135M (30 x (1536^2 + 576^2) x 8 bytes), growing with intermediate_size^2.
    """

    mlp: list[torch.Tensor]
    attention: list[torch.Tensor]
    tokens: int


@torch.no_grad()
def collect_activation_stats(model, calibration_ids: torch.Tensor, batch_size: int = 4) -> ActivationStats:
    """One pass of the decoder over the calibration ids, with hooks on ``down_proj`` and ``o_proj``.

    Those two inputs are exactly the per-channel and per-head signals that get written into
    the residual stream, so nothing else needs recording.
    """
    layers = _decoder_layers(model)
    mlp = [torch.zeros(2 * (layer.mlp.down_proj.in_features,), dtype=torch.float64) for layer in layers]
    attention = [torch.zeros(2 * (layer.self_attn.o_proj.in_features,), dtype=torch.float64)
                 for layer in layers]

    def accumulate(store, i):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            # one batch's product in float32 (fast); the running sum in float64 (many batches)
            store[i] += (x.T @ x).double().cpu()
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(accumulate(mlp, i)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(accumulate(attention, i)))
    try:
        _run_decoder(model, calibration_ids, batch_size)
    finally:
        for handle in handles:
            handle.remove()
    return ActivationStats(mlp=mlp, attention=attention, tokens=calibration_ids.numel())


def width_importance(model, stats: ActivationStats | None) -> WidthImportance:
    """Importance of every MLP channel and attention head; data-driven when stats are given."""
    if stats is None:
        return magnitude_importance(model)
    return activation_importance(model, stats)


@torch.no_grad()
def activation_importance(model, stats: ActivationStats) -> WidthImportance:
    """Output energy of each MLP channel and head on calibration tokens (see module docstring)."""
    head_dim = model.config.head_dim
    mlp_scores, head_scores = [], []
    for layer, mlp_gram, attn_gram in zip(_decoder_layers(model), stats.mlp, stats.attention):
        down = layer.mlp.down_proj.weight.detach().double().cpu()
        mlp_scores.append(mlp_gram.diagonal() * (down * down).sum(dim=0))
        o_proj = layer.self_attn.o_proj.weight.detach().double().cpu()
        n_heads = o_proj.shape[1] // head_dim
        # Each head's own d x d block of the Gram matrix: [H, d, H, d] -> [H, d, d].
        blocks = attn_gram.reshape(n_heads, head_dim, n_heads, head_dim).diagonal(dim1=0, dim2=2)
        blocks = blocks.permute(2, 0, 1)
        o_heads = o_proj.reshape(o_proj.shape[0], n_heads, head_dim)
        # trace(W_h G_h W_h^T) for every head h at once: sum over (out, i, j) of W[o,h,i] G[h,i,j] W[o,h,j]
        head_scores.append(torch.einsum("ohi,hij,ohj->h", o_heads, blocks, o_heads))
    return WidthImportance(mlp=mlp_scores, heads=head_scores, source="activation-energy")


@torch.no_grad()
def magnitude_importance(model) -> WidthImportance:
    """Data-free fallback: the product of each structure's read and write weight norms.

    A channel (head) can only contribute if its input weights can excite it and its output
    weights carry that into the residual stream, so both norms are multiplied. This ignores
    how real inputs align with the weights, which is why calibration data is preferred.
    """
    head_dim = model.config.head_dim
    mlp_scores, head_scores = [], []
    for layer in _decoder_layers(model):
        mlp, attn = layer.mlp, layer.self_attn
        read = mlp.gate_proj.weight.double().pow(2).sum(1) + mlp.up_proj.weight.double().pow(2).sum(1)
        write = mlp.down_proj.weight.double().pow(2).sum(0)
        mlp_scores.append((read * write).cpu())
        n_heads = attn.o_proj.in_features // head_dim
        group = n_heads // (attn.v_proj.out_features // head_dim)
        q = attn.q_proj.weight.double().reshape(n_heads, -1).pow(2).sum(1)
        v = attn.v_proj.weight.double().reshape(-1, head_dim * attn.v_proj.in_features).pow(2).sum(1)
        o = attn.o_proj.weight.double().reshape(attn.o_proj.out_features, n_heads, head_dim).pow(2).sum((0, 2))
        head_scores.append((q * v.repeat_interleave(group) * o).cpu())
    return WidthImportance(mlp=mlp_scores, heads=head_scores, source="weight-magnitude")


@torch.no_grad()
def layer_importance(model, calibration_ids: torch.Tensor | None, batch_size: int = 4) -> list[float]:
    """How much each decoder layer changes the hidden state: ``1 - cos(input, output)``, averaged.

    A layer whose output points the same way as its input mostly passes the residual stream
    through, so removing it perturbs what later layers see the least (the "block influence"
    measure). Without calibration data the fallback is the norm of the layer's two output
    projections (how much it *could* write), a much weaker proxy.
    """
    layers = _decoder_layers(model)
    if calibration_ids is None:
        return [_write_norm(layer) for layer in layers]
    totals = [0.0] * len(layers)

    def record(i):
        def hook(_module, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            cos = nn.functional.cosine_similarity(x_in.double(), x_out.double(), dim=-1)
            totals[i] += float((1.0 - cos).sum())
        return hook

    handles = [layer.register_forward_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        _run_decoder(model, calibration_ids, batch_size)
    finally:
        for handle in handles:
            handle.remove()
    return [t / calibration_ids.numel() for t in totals]


def _write_norm(layer) -> float:
    """Frobenius norms of a layer's two output projections: small weights can write little."""
    o = layer.self_attn.o_proj.weight.detach().double().norm()
    down = layer.mlp.down_proj.weight.detach().double().norm()
    return float(o + down)


# --- planning: how many of each structure survive, and which ------------------------------------

def attention_shape(num_heads: int, num_kv_heads: int, hidden_size: int, ratio: float) -> tuple[int, int]:
    """``(kv_groups, heads_per_group)`` that keeps closest to ``1 - ratio`` of the attention weights.

    Query heads share KV heads in groups of ``num_heads // num_kv_heads``; a pruned layer keeps
    ``kv_groups`` whole groups and the same number of query heads in each of them, so it is
    again standard grouped-query attention. In units of ``head_dim * hidden_size`` weights a
    layer holds ``2 * kv * g`` (q and o) plus ``2 * kv`` (k and v) = ``2 * kv * (g + 1)``, and the
    shape is chosen by that count, so ``ratio`` means the same (a fraction of weights) for
    attention as for the MLP. Granularity is coarse: SmolLM2 (3 groups of 3) can only hold
    24, 18, 16, 12, 8, 6 or 4 of its 24 units, so 0.25 gives 3 groups of 2 heads (exactly 75%)
    and 0.5 gives 2 groups of 2 (exactly 50%; 3 groups of 1 would tie, and ties go to more
    weights kept, then to more query heads); ratios up to 0.125 keep every head.
    At least one head in one group always survives. ``hidden_size`` must be divisible by the
    head count because ``LlamaConfig`` validates that even when ``head_dim`` is explicit.
    """
    per_group = num_heads // num_kv_heads
    target = (1.0 - ratio) * 2 * num_kv_heads * (per_group + 1)
    shapes = [(kv, g) for kv in range(1, num_kv_heads + 1) for g in range(1, per_group + 1)
              if hidden_size % (kv * g) == 0]

    def preference(shape):
        kv, g = shape
        units = 2 * kv * (g + 1)
        return abs(units - target), -units, -kv * g

    return min(shapes, key=preference)


def kept_count(total: int, ratio: float) -> int:
    """``round(total * (1 - ratio))`` with halves rounded up, and never below one."""
    return max(1, min(total, int(math.floor(total * (1.0 - ratio) + 0.5))))


@dataclass
class LayerWidthPlan:
    """What one decoder layer keeps, as indices into its current (unpruned) weights."""

    kv_heads: list[int]
    heads: list[int]        # query heads, grouped by KV head in the order of ``kv_heads``
    channels: list[int]     # MLP intermediate channels, ascending


def plan_width(model, importance: WidthImportance, ratio: float) -> list[LayerWidthPlan]:
    """Pick, in every layer, the most important heads and channels at a uniform count."""
    config = model.config
    kv_keep, per_group_keep = attention_shape(config.num_attention_heads, config.num_key_value_heads,
                                              config.hidden_size, ratio)
    group_size = config.num_attention_heads // config.num_key_value_heads
    plans = []
    for mlp_scores, head_scores in zip(importance.mlp, importance.heads):
        by_group = head_scores.reshape(config.num_key_value_heads, group_size)
        best_in_group = torch.topk(by_group, per_group_keep, dim=1).indices.sort(dim=1).values
        # A group is worth what its surviving heads write, so rank groups by those heads only.
        group_value = torch.gather(by_group, 1, best_in_group).sum(dim=1)
        kv_heads = sorted(torch.topk(group_value, kv_keep).indices.tolist())
        heads = [kv * group_size + h for kv in kv_heads for h in best_in_group[kv].tolist()]
        n_channels = kept_count(mlp_scores.numel(), ratio)
        channels = sorted(torch.topk(mlp_scores, n_channels).indices.tolist())
        plans.append(LayerWidthPlan(kv_heads=kv_heads, heads=heads, channels=channels))
    return plans


def plan_layer_drop(scores: list[float], ratio: float) -> list[int]:
    """Indices of the ``round(ratio * L)`` least influential layers, never the first or last."""
    n_layers = len(scores)
    n_drop = min(max(n_layers - 2, 0), int(math.floor(ratio * n_layers + 0.5)))
    candidates = sorted(range(1, n_layers - 1), key=lambda i: (scores[i], i))
    return sorted(candidates[:n_drop])


# --- applying a plan to the model (in place) ----------------------------------------------------

def apply_width_plan(model, plans: list[LayerWidthPlan], stats: ActivationStats | None = None) -> None:
    """Cut every layer down to its plan and update the config; all plans must have equal counts.

    With ``stats`` the kept columns of ``down_proj`` and ``o_proj`` are refit to make up for
    what the removed channels and heads wrote (:func:`refit_output_weight`); without, they are
    plainly sliced.
    """
    layers = _decoder_layers(model)
    shapes = {(len(p.kv_heads), len(p.heads), len(p.channels)) for p in plans}
    if len(plans) != len(layers) or len(shapes) != 1:
        raise ValueError("a width plan needs one entry per layer with the same counts in every layer")
    (n_kv, n_heads, n_channels), = shapes
    head_dim = model.config.head_dim
    for i, (layer, plan) in enumerate(zip(layers, plans)):
        _prune_attention(layer.self_attn, plan.heads, plan.kv_heads, head_dim,
                         stats.attention[i] if stats is not None else None)
        _prune_mlp(layer.mlp, plan.channels, stats.mlp[i] if stats is not None else None)
    config = model.config
    config.num_attention_heads = n_heads
    config.num_key_value_heads = n_kv
    config.head_dim = head_dim  # explicit, or it would be recomputed as hidden_size // heads
    config.intermediate_size = n_channels


def _prune_attention(attn, heads: list[int], kv_heads: list[int], head_dim: int,
                     gram: torch.Tensor | None = None) -> None:
    """Keep the given query heads (rows of q, columns of o) and KV heads (rows of k and v).

    The kept heads compute exactly what they did before (each head only reads its own KV
    head), which is what makes refitting ``o_proj`` on the unpruned statistics valid.
    """
    q_rows = _head_rows(heads, head_dim)
    kv_rows = _head_rows(kv_heads, head_dim)
    o_weight = refit_output_weight(attn.o_proj.weight, gram, q_rows) if gram is not None else None
    attn.q_proj = _select_linear(attn.q_proj, rows=q_rows)
    attn.k_proj = _select_linear(attn.k_proj, rows=kv_rows)
    attn.v_proj = _select_linear(attn.v_proj, rows=kv_rows)
    attn.o_proj = _select_linear(attn.o_proj, columns=q_rows, replacement=o_weight)
    attn.num_key_value_groups = len(heads) // len(kv_heads)  # read by the attention kernels


def _prune_mlp(mlp, channels: list[int], gram: torch.Tensor | None = None) -> None:
    """Keep the given intermediate channels: rows of gate and up, the matching columns of down."""
    idx = torch.tensor(channels, dtype=torch.long)
    down_weight = refit_output_weight(mlp.down_proj.weight, gram, idx) if gram is not None else None
    mlp.gate_proj = _select_linear(mlp.gate_proj, rows=idx)
    mlp.up_proj = _select_linear(mlp.up_proj, rows=idx)
    mlp.down_proj = _select_linear(mlp.down_proj, columns=idx, replacement=down_weight)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(channels)


REFIT_RIDGE = 1e-2


@torch.no_grad()
def refit_output_weight(weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor,
                        ridge: float = REFIT_RIDGE) -> torch.Tensor:
    """Output weights over the kept input columns that best reproduce the full layer's output.

    With inputs ``x`` (second moment ``G = sum x x^T``) split into kept ``K`` and removed ``R``
    columns, minimizing ``sum_t ||W x_t - W' x_K,t||^2 + lam ||W' - W_K||^2`` gives
    ``W' = W_K + W_R G_RK (G_KK + lam I)^-1``: what the removed channels wrote is re-expressed
    through the kept channels they correlate with. The penalty pulls toward the plainly sliced
    weights, so with little calibration data the refit stays close to plain slicing; ``lam`` is
    ``ridge`` times the mean of ``diag(G_KK)`` so that it does not depend on activation scale.
    Measured on SmolLM2-135M (docs/pruning.md) it more than halves the perplexity increase.
    """
    keep = keep.to(torch.long).cpu()
    removed_mask = torch.ones(gram.shape[0], dtype=torch.bool)
    removed_mask[keep] = False
    removed = removed_mask.nonzero().flatten()
    w = weight.detach().double().cpu()
    if removed.numel() == 0:
        return weight.detach()[:, keep].clone()
    g_kk = gram[keep][:, keep]
    g_rk = gram[removed][:, keep]
    lam = ridge * float(g_kk.diagonal().mean().clamp_min(1e-12))
    system = g_kk + lam * torch.eye(len(keep), dtype=torch.float64)
    correction = torch.linalg.solve(system, (w[:, removed] @ g_rk).T).T  # system is symmetric
    return (w[:, keep] + correction).to(device=weight.device, dtype=weight.dtype)


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    """Weight rows belonging to the given heads, in the given head order."""
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)], dtype=torch.long)


@torch.no_grad()
def _select_linear(linear: nn.Linear, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None,
                   replacement: torch.Tensor | None = None) -> nn.Linear:
    """A new ``nn.Linear`` holding a copy of the selected output rows / input columns.

    ``replacement``, when given, is used instead of the selected weight (a refit one of the
    same shape); the bias is still the selected one.
    """
    weight, bias = linear.weight, linear.bias
    if rows is not None:
        rows = rows.to(weight.device)
        weight = weight.index_select(0, rows)
        bias = bias.index_select(0, rows) if bias is not None else None
    if columns is not None:
        weight = weight.index_select(1, columns.to(weight.device))
    if replacement is not None:
        if replacement.shape != weight.shape:
            raise ValueError(f"replacement weight {tuple(replacement.shape)} != selected {tuple(weight.shape)}")
        weight = replacement
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if bias is not None:
        new.bias.copy_(bias)
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def drop_layers(model, dropped: list[int]) -> None:
    """Remove decoder layers and renumber the rest, keeping config and KV-cache indices in step."""
    decoder = _decoder(model)
    keep = [i for i in range(len(decoder.layers)) if i not in set(dropped)]
    decoder.layers = nn.ModuleList([decoder.layers[i] for i in keep])
    for new_idx, layer in enumerate(decoder.layers):
        layer.self_attn.layer_idx = new_idx  # the KV cache is indexed by position in the stack
    config = model.config
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]


# --- the entry point ----------------------------------------------------------------------------

def prune_model(model, config: PruningConfig, calibration_ids: torch.Tensor | None = None, *,
                refit: bool = True, importance_model=None) -> dict:
    """Prune ``model`` in place as ``config`` says and return a JSON-serializable report.

    ``importance_model`` (same shape as ``model``, e.g. ``model`` with a tuned LoRA adapter
    merged, :func:`models.lora.merged_copy`) is the model whose activations and weights decide
    what to keep and drive the refit, while the cut is applied to ``model``'s own weights:
    FedSpine's iterative prune-and-tune, where the next pruning step is chosen on the tuned
    model but devices keep training an adapter over the untuned base. Default: ``model`` itself.

    ``calibration_ids`` (LongTensor ``[N, S]``, e.g. from :func:`calibration_ids`) drive the
    importance scores and, for ``width`` with ``refit``, the least-squares refit of the output
    projections; without them weight norms are used and nothing is refit. A ratio of 0
    changes nothing. The report names, per remaining layer, its source layer, kept query and
    KV heads (indices into the original layer) and how many MLP channels it kept, plus the
    dropped layers, the resulting config shape and the parameter counts before and after.
    """
    _check_prunable(model)
    if calibration_ids is not None:
        calibration_ids = torch.as_tensor(calibration_ids, dtype=torch.long)
        if calibration_ids.dim() != 2 or calibration_ids.numel() == 0:
            raise ValueError("calibration_ids must be a non-empty [N, S] tensor of token ids")
    params_before = count_parameters(model)
    report = {"method": config.method, "ratio": config.ratio, "importance": None, "refit": False,
              "dropped_layers": [],
              "layers": [_unpruned_layer_entry(model, i) for i in range(len(_decoder_layers(model)))]}
    if importance_model is not None:
        _check_prunable(importance_model)
        for key in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size"):
            if getattr(importance_model.config, key) != getattr(model.config, key):
                raise ValueError(f"the importance model's {key} ({getattr(importance_model.config, key)}) "
                                 f"differs from the pruned model's ({getattr(model.config, key)})")
    if config.ratio > 0:
        report.update(_PRUNERS[config.method](model, config.ratio, calibration_ids, refit, report["layers"],
                                              importance_model or model))
        model.config.validate()
    report.update(
        params_before=params_before,
        params_after=count_parameters(model),
        config={key: getattr(model.config, key) for key in
                ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "intermediate_size", "hidden_size")},
    )
    return report


def _prune_width(model, ratio, calibration_ids, refit, layers: list[dict], scorer) -> dict:
    stats = collect_activation_stats(scorer, calibration_ids) if calibration_ids is not None else None
    importance = width_importance(scorer, stats)
    plans = plan_width(model, importance, ratio)
    apply_width_plan(model, plans, stats if refit else None)
    for entry, plan in zip(layers, plans):
        entry.update(kept_heads=plan.heads, kept_kv_heads=plan.kv_heads,
                     mlp_channels_kept=len(plan.channels))
    return {"importance": importance.source, "refit": bool(refit and stats is not None), "layers": layers}


def _prune_layers(model, ratio, calibration_ids, _refit, layers: list[dict], scorer) -> dict:
    scores = layer_importance(scorer, calibration_ids)
    dropped = plan_layer_drop(scores, ratio)
    drop_layers(model, dropped)
    kept = [entry for entry in layers if entry["source_layer"] not in set(dropped)]
    for new_idx, entry in enumerate(kept):
        entry["layer"] = new_idx
    return {"importance": "block-influence" if calibration_ids is not None else "weight-magnitude",
            "dropped_layers": dropped, "layer_scores": [round(s, 6) for s in scores], "layers": kept}


_PRUNERS = {"width": _prune_width, "layers": _prune_layers}


def _unpruned_layer_entry(model, index: int) -> dict:
    config = model.config
    return {"layer": index, "source_layer": index,
            "kept_heads": list(range(config.num_attention_heads)),
            "kept_kv_heads": list(range(config.num_key_value_heads)),
            "mlp_channels_kept": config.intermediate_size}


def count_parameters(model) -> int:
    """Distinct parameters (a tied embedding / LM head counts once)."""
    return sum(p.numel() for p in model.parameters())


# --- structure checks and traversal -------------------------------------------------------------

def _decoder(model):
    return model.model


def _decoder_layers(model):
    return list(_decoder(model).layers)


def _check_prunable(model) -> None:
    """Refuse models whose layout this module does not know, rather than cut them wrongly."""
    decoder = getattr(model, "model", None)
    if decoder is None or not hasattr(decoder, "layers"):
        raise TypeError(f"{type(model).__name__} is not a Llama-style causal LM (no model.layers)")
    for i, layer in enumerate(decoder.layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        names = {"q_proj": attn, "k_proj": attn, "v_proj": attn, "o_proj": attn,
                 "gate_proj": mlp, "up_proj": mlp, "down_proj": mlp}
        for name, parent in names.items():
            module = getattr(parent, name, None)
            if type(module) is not nn.Linear:
                raise TypeError(f"layer {i} {name} is {type(module).__name__}, not nn.Linear: prune "
                                "before attaching LoRA adapters or quantizing")
    config = model.config
    if config.num_attention_heads % config.num_key_value_heads:
        raise TypeError("num_attention_heads must be a multiple of num_key_value_heads")


@torch.no_grad()
def _run_decoder(model, ids: torch.Tensor, batch_size: int) -> None:
    """Run the decoder stack only: the LM head's logits are not needed for any score."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, ids.shape[0], batch_size):
            _decoder(model)(input_ids=ids[start:start + batch_size].to(device), use_cache=False)
    finally:
        model.train(was_training)

"""Scoring and server-side training that run only the layers an adapter can change.

When LoRA sits in the last k decoder layers, everything below the lowest LoRA layer computes
the same hidden states whatever the adapter holds. A device exploits that with its prefix
cache (``fleet/prefix_cache.py``); the server side can too:

- **evaluation**: the coordinator scores every global adapter of a job on the same held-out
  rows. :class:`FrozenPrefixModel` wraps the eager PEFT model so that the tasks' scoring code
  (which asks :func:`models.tasks.base.causal_lm_parts` for a decoder and an LM head) runs the
  frozen bottom once per row, keeps its output, and from then on runs only the top layers.
  For SmolLM2 with LoRA in the last 4 of 30 layers, a full-split evaluation after the first
  costs about 4/30 of the decoder.
- **centralized reference training** (``bench/federated_accuracy.py``) trains the same top
  layers from cached hidden states with :class:`export.program_modules.TopTrainingProgram`.

The cut reuses :func:`export.program_modules.computing_only` (the exported prefix and top
programs' own cut), so bottom and top are Hugging Face's decoder with pass-through layers:
same position ids, rotary embeddings and causal mask as a whole pass. The cache keys rows by
their token ids (padding included). :meth:`FrozenPrefixModel.check` compares
the cut against a whole pass on a few rows, and :class:`FrozenPrefixModel` refuses a model
with a trainable parameter below the cut.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from models.decoder_cut import causal_lm_of, computing_only


def first_trained_layer(peft_model: torch.nn.Module) -> int | None:
    """The lowest decoder layer holding a LoRA weight (None: no LoRA in a decoder layer)."""
    layers = causal_lm_of(peft_model).get_decoder().layers
    for index, layer in enumerate(layers):
        if any("lora_" in name for name, _ in layer.named_parameters()):
            return index
    return None


@dataclass
class FrozenPrefixStats:
    """Rows whose bottom was computed, rows served from the cache, and bytes kept."""

    computed: int = 0
    hits: int = 0
    bytes: int = 0


class _CutDecoder(torch.nn.Module):
    """Called like a Hugging Face decoder (``input_ids=``, ``use_cache=``), runs the top only."""

    def __init__(self, owner: "FrozenPrefixModel"):
        super().__init__()
        self._owner = owner

    def forward(self, input_ids: torch.Tensor, attention_mask=None, use_cache: bool = False, **_):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("FrozenPrefixModel scores right-padded rows without an attention mask")
        return SimpleNamespace(last_hidden_state=self._owner.top(self._owner.bottom(input_ids)))


class FrozenPrefixModel:
    """A PEFT causal LM seen through its frozen prefix: the bottom is computed once per row.

    ``max_bytes`` bounds the cache: rows beyond it are computed again each time (slower, never wrong).
    """

    def __init__(self, peft_model: torch.nn.Module, max_bytes: int = 1 << 30):
        self.peft_model = peft_model
        self.causal_lm = causal_lm_of(peft_model)
        self.first_layer = first_trained_layer(peft_model)
        if self.first_layer is None:
            raise ValueError("the model has no LoRA in its decoder layers: nothing to cut below")
        below = [name for index in range(self.first_layer)
                 for name, p in self.causal_lm.get_decoder().layers[index].named_parameters() if p.requires_grad]
        if below:
            raise ValueError(f"{len(below)} trainable parameter(s) below layer {self.first_layer} "
                             f"(e.g. {below[0]}): the prefix is not frozen")
        self.num_layers = len(self.causal_lm.get_decoder().layers)
        self.max_bytes = max_bytes
        self.stats = FrozenPrefixStats()
        self._rows: dict[str, torch.Tensor] = {}
        self._decoder = _CutDecoder(self)

    # --- what causal_lm_parts asks for ----------------------------------------------------------

    def get_decoder(self):
        return self._decoder

    def get_output_embeddings(self):
        return self.causal_lm.get_output_embeddings()

    # --- the two halves ---------------------------------------------------------------------------

    @staticmethod
    def _key(row: torch.Tensor) -> tuple[str, int]:
        """The row's token ids as given (padding included: scoring batches the same rows the same
        way every round, and a pad id may also be a real token, so nothing is stripped)."""
        digest = hashlib.sha256(row.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()
        return digest, int(row.numel())

    @torch.no_grad()
    def _compute_bottom(self, ids: torch.Tensor) -> torch.Tensor:
        with computing_only(self.causal_lm, range(self.first_layer), final_norm=False):
            return self.causal_lm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state

    def bottom(self, ids: torch.Tensor) -> torch.Tensor:
        """[batch, seq, width] hidden states entering the lowest LoRA layer (cached per row)."""
        keys = [self._key(row) for row in ids]
        rows = [self._rows.get(key) for key, _ in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        self.stats.hits += len(keys) - len(missing)
        if missing:
            computed = self._compute_bottom(ids[missing])
            self.stats.computed += len(missing)
            for j, i in enumerate(missing):
                key, length = keys[i]
                rows[i] = computed[j, :length].clone()
                size = rows[i].numel() * rows[i].element_size()
                if self.stats.bytes + size <= self.max_bytes:
                    self._rows[key] = rows[i]
                    self.stats.bytes += size
        out = torch.zeros(ids.shape[0], ids.shape[1], rows[0].shape[-1], dtype=rows[0].dtype)
        for i, row in enumerate(rows):
            out[i, :row.shape[0]] = row     # positions after the row's end only feed padding (causal)
        return out

    def top(self, hidden: torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden states (after the final norm) from the bottom's output."""
        with computing_only(self.causal_lm, range(self.first_layer, self.num_layers), final_norm=True):
            return self.causal_lm.get_decoder()(inputs_embeds=hidden, use_cache=False).last_hidden_state

    @torch.no_grad()
    def check(self, ids: torch.Tensor, atol: float = 1e-4) -> float:
        """Largest difference between the cut and a whole decoder pass on ``ids`` (raises beyond ``atol``).

        Run once per loaded model: the cut leans on the decoder treating ``inputs_embeds``
        exactly like its own embeddings, which an architecture could break (e.g. by scaling).
        """
        whole = self.causal_lm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
        cut = self.top(self._compute_bottom(ids))
        worst = float((whole - cut).abs().max())
        if not worst <= atol:
            raise ValueError(f"the frozen-prefix cut differs from a whole pass by {worst:.3g} (> {atol:g}) "
                             f"for {type(self.causal_lm).__name__}; score without it")
        return worst

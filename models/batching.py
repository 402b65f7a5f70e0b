"""Turn text into the fixed-shape [batch, seq] (ids, labels) pairs training programs take.

On-device programs are compiled for one shape, so every example is truncated or padded to
``seq`` tokens; padded positions carry label -100 and so add nothing to the loss. The device
runtime, the eager reference and the exporter's verification all batch through here, which is
what makes their losses comparable token for token.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def labelled_positions_per_row(labels: torch.Tensor) -> torch.Tensor:
    """How many next-token targets each row of a [batch, seq] ``labels`` has (``labels[:, 1:] != -100``).

    Position 0's label never counts: nothing predicts the first token.
    """
    labels = torch.as_tensor(labels)
    return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


def check_loss_positions(labels: torch.Tensor, loss_positions: int | None) -> None:
    """``ValueError`` if a row has more labelled positions than a label-position program computes.

    A program compiled with ``loss_positions`` K (``models.tier.Tier``) runs the LM head on
    the first K labelled positions of each row only; it cannot see, let alone report, a row
    with more, and would silently train on part of its loss. Trainers call this before every
    step. ``None`` (the head at every position) accepts everything.
    """
    if loss_positions is None:
        return
    counts = labelled_positions_per_row(labels)
    if counts.numel() and int(counts.max()) > loss_positions:
        row = int(counts.argmax())
        raise ValueError(f"batch row {row} has {int(counts[row])} labelled positions, but this program computes "
                         f"the loss at only the first {loss_positions} per row (loss_positions={loss_positions}); "
                         "train it on a task whose targets fit, or use an artifact exported with more (or "
                         "without) --loss-positions")


def pad_token_id(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else its end-of-sequence token."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def encode_example(tokenizer, text: str, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One text -> (ids, labels) of length ``seq``; labels are -100 on padding."""
    token_ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=seq)["input_ids"]
    if not token_ids:
        raise ValueError("cannot train on an empty text")
    ids = torch.full((seq,), pad_token_id(tokenizer), dtype=torch.long)
    labels = torch.full((seq,), IGNORE_INDEX, dtype=torch.long)
    ids[: len(token_ids)] = torch.tensor(token_ids, dtype=torch.long)
    labels[: len(token_ids)] = ids[: len(token_ids)]
    return ids, labels


def make_batches(tokenizer, texts: list[str], batch: int, seq: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive texts grouped into full batches (a short final group is dropped)."""
    examples = [encode_example(tokenizer, text, seq) for text in texts]
    batches = []
    for start in range(0, len(examples) - batch + 1, batch):
        group = examples[start:start + batch]
        batches.append((torch.stack([ids for ids, _ in group]), torch.stack([lab for _, lab in group])))
    return batches

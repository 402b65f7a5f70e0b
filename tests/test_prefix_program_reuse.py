"""Tiers that share a frozen bottom compile its prefix program once (export's program_cache).

Ranks of one pruned base (FedSpine's arms, HetLoRA's ranks) differ only above the cut, and the
prefix's XNNPACK lowering is most of an export of SmolLM2 (148 of 228 s), so the exporter keys
compiled prefixes by their content and reuses them. A reused prefix must be the one a fresh
compile would give the tier: the second tier's artifact still trains as eager PyTorch does.
"""

from __future__ import annotations

from conftest import tiny_tier


def test_a_second_rank_of_one_base_reuses_the_prefix_and_still_trains_like_eager(tmp_path):
    from export.executorch import PREFIX_PROGRAM_FILE
    from export.pipeline import export_artifact
    from fleet.verify import verify_artifact

    cache = tmp_path / "programs"
    shared = dict(prune_ratio=0.5, prefix_cache=True, kernels="portable")
    _, first = export_artifact("tiny", tiny_tier(lora_rank=4, **shared), tmp_path / "r4", program_cache=cache)
    training, second = export_artifact("tiny", tiny_tier(lora_rank=2, **shared), tmp_path / "r2", program_cache=cache)
    _, other = export_artifact("tiny", tiny_tier(lora_rank=2, lora_layers=1, **shared), tmp_path / "k1",
                               program_cache=cache)
    assert [m["export"]["prefix_reused"] for m in (first, second, other)] == [False, True, False]   # k1: another cut
    assert (tmp_path / "r4" / PREFIX_PROGRAM_FILE).read_bytes() == (tmp_path / "r2" / PREFIX_PROGRAM_FILE).read_bytes()
    assert len(list(cache.iterdir())) == 2
    check = verify_artifact(training, tmp_path / "r2", steps=2)
    assert check["max_abs_loss_diff"] < 1e-4 and check["max_abs_lora_diff"] < 1e-4, check
    assert check["max_abs_lora_change"] > 1e-4

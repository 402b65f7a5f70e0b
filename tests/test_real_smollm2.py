"""The real SmolLM2-135M, pruned, int8 and prefix-cached, exported and trained in the ExecuTorch runtime.

Marked ``real``: minutes on 2 cores, but CI runs it, because the tiny preset cannot show that
the exporter copes with a real checkpoint (tied 49k-token embeddings, GQA with 3 heads per
group, 30 layers).

On portable kernels: what the real checkpoint adds is the graph (its shapes, tying and
grouping), which the backend does not change. Lowering this int8 graph to XNNPACK takes about
eight minutes on 2 cores, nearly all of it ExecuTorch handling each of its ~380 small
partitions (the int8 dequantization runs between them, undelegated), which was a third of
the whole suite's time. XNNPACK with pruning, int8 and the prefix cache together is covered on
the tiny preset (tests/test_training_speed.py), and on the real model by bench/train_step.py.
"""

from __future__ import annotations

import pytest

from export.manifest import read_manifest

pytestmark = pytest.mark.real


def test_smollm2_pruned_int8_prefix_cached_exports_and_agrees_with_eager(tmp_path):
    """Pruned, int8, frozen-prefix caching: the runtime (prefix program, then top program)
    against the eager whole model."""
    from fleet.verify import verify_artifact
    from export.pipeline import export_artifact
    from models.tier import Tier

    tier = Tier(prune_ratio=0.5, lora_rank=8, lora_layers=8, quantize="int8", batch=4, seq=64, prefix_cache=True,
                kernels="portable")
    out = tmp_path / "smollm2-p50-int8"
    training, _ = export_artifact("smollm2-135m", tier, out)
    manifest = read_manifest(out)
    assert manifest.data["base_model"]["num_hidden_layers"] == 30
    assert manifest.data["pruned_model"]["intermediate_size"] < 1536
    assert len(manifest.lora_tensors) == 8 * 2 * 2
    assert manifest.verify_files(out) == []
    assert manifest.data["prefix"]["first_trained_layer"] == 22
    assert manifest.data["export"]["delegate_calls"] == 0
    report = verify_artifact(training, out, steps=5)
    assert report["max_abs_lora_diff"] <= 1e-4, report
    assert report["max_abs_loss_diff"] <= 1e-3, report
    assert report["max_abs_lora_change"] > 1e-3

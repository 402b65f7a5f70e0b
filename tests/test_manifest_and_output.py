"""The manifest says what a device needs, with correct hashes; outputs are all or nothing."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_tier
from export.manifest import SCHEMA_VERSION, read_manifest, sha256_file
from export.pipeline import export_artifact


def test_manifest_describes_program_tokenizer_lora_and_files(tiny_fp32_artifact):
    out, training, _ = tiny_fp32_artifact
    manifest = read_manifest(out)
    data = manifest.data
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["base_model"]["id"] == "tiny"
    assert data["base_model"]["content_sha256"] == training.base.content_sha256
    assert [i["name"] for i in manifest.inputs] == ["ids", "labels"]
    assert all(i["shape"] == [2, 32] and i["dtype"] == "int64" for i in manifest.inputs)
    assert data["tier"]["lora_rank"] == 4 and data["training"]["lr"] == 0.5
    assert data["tokenizer"]["pad_token_id"] == 0
    names = {t["name"] for t in manifest.lora_tensors}
    assert len(names) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert all(n.startswith("base_model.model.model.layers.") for n in names)
    for rel in ("model.pte", "lora.ptd", "tokenizer/tokenizer.json"):
        assert manifest.files[rel]["device"] is True
        assert manifest.files[rel]["sha256"] == sha256_file(out / rel)
    assert manifest.files["initial_adapter/adapter_model.safetensors"]["device"] is False
    assert manifest.verify_files(out) == []


def test_manifest_detects_a_tampered_file(tiny_fp32_artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_fp32_artifact[0], copy)
    with open(copy / "lora.ptd", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    assert read_manifest(copy).verify_files(copy) == ["lora.ptd"]


def test_unknown_schema_version_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ValueError, match="schema version 99"):
        read_manifest(tmp_path)


def test_initial_adapter_loads_with_peft(tiny_fp32_artifact):
    from peft import PeftModel

    from models.registry import load_base_model

    out, _, _ = tiny_fp32_artifact
    model = PeftModel.from_pretrained(load_base_model("tiny").model, str(out / "initial_adapter"))
    ranks = {m.r["default"] for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.r}
    assert ranks == {4}


def test_failed_export_leaves_no_output_directory(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="only 4 layers"):
        export_artifact("tiny", tiny_tier(lora_layers=5), out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_replaced(tiny_fp32_artifact, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="--force"):
        export_artifact("tiny", tiny_tier(), out)
    assert (out / "precious.txt").read_text() == "keep me"


def test_pruned_model_exports_and_trains(tmp_path):
    from conftest import tiny_batches
    from fleet.verify import verify_against_eager

    out = tmp_path / "pruned"
    training, manifest = export_artifact("tiny", tiny_tier(prune_ratio=0.5, quantize="int8", kernels="portable"), out)
    pruned = manifest["pruned_model"]
    assert pruned["intermediate_size"] < 176 and pruned["num_attention_heads"] < 4
    # The unpruned width stays in base_model: the coordinator estimates other tiers' costs from it.
    from coordinator.services.tiers import model_shape

    assert model_shape(manifest) == {"num_hidden_layers": 4, "hidden_size": 64, "vocab_size": 259,
                                     "intermediate_size": 176, "num_attention_heads": 4, "num_key_value_heads": 2,
                                     "head_dim": 16}
    assert (out / "pruned_base" / "config.json").is_file()
    result = verify_against_eager(training.peft_model, out, tiny_batches(training.base.tokenizer), 5, lr=0.5)
    assert result["max_abs_lora_diff"] <= 1e-5

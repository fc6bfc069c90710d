"""train.lora: LoRA adapters on the encoder, trained by the real train stage (Ray Train) on the tiny encoder."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sentence_transformers import SentenceTransformer

from pipeline import encoder_lora, train
from pipeline.config import ConfigError
from pipeline.layout import lora_encoders

pytestmark = pytest.mark.timeout(600)

WORDS = ["river", "mountain", "school", "market", "doctor", "rain", "music", "farm", "bread", "letter", "train", "garden"]
TEXTS = ["the river is near", "a market far away", "Ẹ kú àárọ̀", "Kumno phi long?", "bread"]


def rows(lang: str, strategy: str) -> list[dict]:
    return [{"id": f"{lang}-{strategy}-{i}", "lang": lang, "strategy": strategy, "anchor": f"the {w} is near",
             "positive": f"a {w} nearby", "negative": f"a {WORDS[(i + 5) % len(WORDS)]} far away"}
            for i, w in enumerate(WORDS)]


@pytest.fixture
def triplets(tmp_path):
    """yor and kha triplets of two strategies (icl, parallel)."""
    path = tmp_path / "triplets.parquet"
    pq.write_table(pa.Table.from_pylist(rows("yor", "icl") + rows("kha", "icl") + rows("yor", "parallel")[:6]), path)
    return str(path)


def lora_config(make_config, encoder, **lora):
    return make_config(
        synthesis={"strategies": ["icl", "parallel"]},
        train={"encoder": encoder, "batch_size": 8, "epochs": 3, "lr": 3e-2, "cpus_per_worker": 0.5, "max_length": 16,
               "human_nli_baseline": False, "lora": {"rank": 4, "alpha": 8, "learning_rate": 3e-2, **lora}})


def peft_vectors(base_st: str, adapter: str, texts: list[str]) -> np.ndarray:
    """The adapter applied by peft itself (unmerged) on the base sentence-transformers model's transformer."""
    from peft import PeftModel

    model = SentenceTransformer(base_st, device="cpu")
    model[0].auto_model = PeftModel.from_pretrained(model[0].auto_model, adapter)
    return model.encode(texts, normalize_embeddings=True)


def test_config_lora_is_off_by_default_and_checked(make_config, tiny_encoder):
    assert make_config(train={"encoder": tiny_encoder}).train.lora is None
    cfg = make_config(train={"lora": {"rank": 4}})
    assert (cfg.train.lora.rank, cfg.train.lora.per, cfg.train.lora.target_modules) == (4, "language", "all-linear")
    assert cfg.train.lora.learning_rate == 2e-3 and cfg.train.lr == 5e-5  # LoRA's own rate, measured on the demo
    with pytest.raises(ConfigError, match=r"train\.lora\.per"):
        make_config(train={"lora": {"per": "strategy"}})
    with pytest.raises(ConfigError, match=r"train\.lora\.rank"):
        make_config(train={"lora": {"rank": 0}})


def test_sets_per_language_or_per_language_and_strategy(make_config, tiny_encoder, triplets, tmp_path):
    sets, labels, skipped = encoder_lora.training_sets(lora_config(make_config, tiny_encoder), triplets, str(tmp_path / "a"))
    assert labels == {"kha": ("kha", None), "yor": ("yor", None)} and not skipped
    assert pq.read_metadata(sets["yor"]).num_rows == len(WORDS) + 6  # both strategies of yor
    sets, labels, _ = encoder_lora.training_sets(lora_config(make_config, tiny_encoder, per="language_strategy"),
                                                 triplets, str(tmp_path / "b"))
    assert labels == {"kha-icl": ("kha", "icl"), "yor-icl": ("yor", "icl"), "yor-parallel": ("yor", "parallel")}
    assert set(pq.read_table(sets["yor-parallel"])["strategy"].to_pylist()) == {"parallel"}


def test_lora_run_writes_adapters_registry_and_merged_models_that_agree_and_the_same_seed_trains_the_same_adapters(
        ray_local, make_config, tiny_encoder, triplets, tmp_path):
    cfg = lora_config(make_config, tiny_encoder, export_merged=True)
    out = tmp_path / "train"
    result = train.run(cfg, {"triplets": triplets}, str(out))

    lora_dir = out / "lora"
    assert result.outputs["lora"] == str(lora_dir)
    assert sorted(result.details["variants"]) == ["lora-kha", "lora-yor"]  # no full fine-tune unless asked
    assert not (out / "models" / "icl").exists()
    registry = encoder_lora.read_registry(str(lora_dir))
    base_sha = encoder_lora.weights_sha256(SentenceTransformer(str(lora_dir / "base"), device="cpu")[0].auto_model)
    assert registry["base_sha256"] == base_sha == encoder_lora.encoder_sha256(tiny_encoder)
    assert [a["id"] for a in registry["adapters"]] == ["kha", "yor"]
    for entry in registry["adapters"]:
        assert entry["language"] == entry["id"] and entry["strategy"] is None
        assert entry["steps"] == (3 * 3 if entry["id"] == "yor" else 3 * 2)  # 18 / 12 triplets, batch 8
        assert len(entry["data_sha256"]) == 12 and entry["lora"]["rank"] == 4

    base = SentenceTransformer(str(lora_dir / "base"), device="cpu").encode(TEXTS, normalize_embeddings=True)
    vectors = {}
    for adapter in ("yor", "kha"):
        folder = lora_dir / adapter
        assert encoder_lora.adapter_problem(str(folder)) is None
        assert encoder_lora.adapter_base(str(folder)) == str(lora_dir / "base")
        # peft's format, only the LoRA weights: far smaller than the encoder
        assert (folder / "adapter_model.safetensors").stat().st_size < (lora_dir / "base" / "model.safetensors").stat().st_size / 3
        merged = SentenceTransformer(str(out / "models" / f"lora-{adapter}"), device="cpu").encode(TEXTS, normalize_embeddings=True)
        unmerged = peft_vectors(str(lora_dir / "base"), str(folder), TEXTS)
        assert np.min(np.sum(merged * unmerged, axis=1)) >= 0.9999
        assert np.min(np.sum(merged * base, axis=1)) < 0.99, "training changed nothing: the check above proves nothing"
        vectors[adapter] = merged
        # what the evaluate stage and `bootembed lora merge` build in memory when no merged folder was exported
        in_memory = encoder_lora.load_merged(str(folder)).encode(TEXTS, normalize_embeddings=True)
        assert np.min(np.sum(merged * in_memory, axis=1)) >= 0.9999
        assert "LoRA adapter (rank 4" in (out / "models" / f"lora-{adapter}" / "BOOTEMBED.md").read_text()
    assert np.min(np.sum(vectors["yor"] * vectors["kha"], axis=1)) < 0.9999  # each language its own adapter

    # What `bootembed serve RUN_DIR` finds: the base and every adapter
    os.makedirs(tmp_path / "run", exist_ok=True)
    os.symlink(out, tmp_path / "run" / "train")
    base_dir, adapters = encoder_lora.run_adapters(str(tmp_path / "run"))
    assert Path(base_dir).resolve() == (lora_dir / "base").resolve() and sorted(adapters) == ["kha", "yor"]
    assert lora_encoders(str(lora_dir), str(out / "models")) == {}, "merged folders exported: evaluated as they are"

    # The adapters' random init is seeded: before, each run drew its own and trained other weights.
    again = tmp_path / "again"
    train.run(lora_config(make_config, tiny_encoder), {"triplets": triplets}, str(again))
    for adapter in ("kha", "yor"):
        assert (again / "lora" / adapter / "adapter_model.safetensors").read_bytes() == \
            (lora_dir / adapter / "adapter_model.safetensors").read_bytes()
    # export_merged is off by default: adapters only (2 MB, not the encoder's size each), evaluated merged in memory
    assert not list((again / "models").glob("lora-*"))
    assert lora_encoders(str(again / "lora"), str(again / "models")) == {
        "lora-kha": str(again / "lora" / "kha"), "lora-yor": str(again / "lora" / "yor")}


def test_keep_full_finetune_trains_both(ray_local, make_config, tiny_encoder, triplets, tmp_path):
    cfg = lora_config(make_config, tiny_encoder, per="language_strategy", keep_full_finetune=True, learning_rate=2e-2,
                      export_merged=True)
    cfg.synthesis.strategies = ["icl"]
    cfg.train.epochs = 1  # what is checked here is which models are trained and written, not how well
    result = train.run(cfg, {"triplets": triplets}, str(tmp_path / "train"))
    assert sorted(result.details["variants"]) == ["icl", "lora-kha-icl", "lora-yor-icl"]
    assert all((tmp_path / "train" / "models" / v / "modules.json").is_file() for v in result.details["variants"])
    # the adapters at train.lora.learning_rate, the full fine-tune at train.lr; the report sets their sizes side by side
    card = lambda v: (tmp_path / "train" / "models" / v / "BOOTEMBED.md").read_text()  # noqa: E731
    assert "lr 0.02," in card("lora-kha-icl") and "lr 0.03," in card("icl")
    adapter_bytes = result.details["variants"]["lora-kha-icl"]["adapter_bytes"]
    assert adapter_bytes == encoder_lora.folder_bytes(str(tmp_path / "train" / "lora" / "kha-icl")) > 0


def test_adapter_problems_name_what_is_wrong(tmp_path, tiny_encoder):
    from peft import get_peft_model

    from pipeline.config import EncoderLoraConfig
    from pipeline.models import load_encoder

    folder = tmp_path / "a"
    _, model = load_encoder(tiny_encoder, freeze_embeddings=False)
    lora = EncoderLoraConfig(rank=2, alpha=4, dropout=0.0, target_modules=["query"])
    get_peft_model(model, encoder_lora.peft_config(lora)).save_pretrained(folder)
    assert "bootembed_lora.json" in encoder_lora.adapter_problem(str(folder))  # no record of its base
    (folder / encoder_lora.META).write_text(json.dumps({"base_sha256": "x"}))
    assert encoder_lora.adapter_problem(str(folder)) is None
    meta, weights = encoder_lora.read_adapter(str(folder))
    assert meta == {"base_sha256": "x"}
    assert sorted(weights) == ["encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.query"]
    a, b, scale = weights["encoder.layer.0.attention.self.query"]
    assert (tuple(a.shape), tuple(b.shape), scale) == ((2, 32), (32, 2), 2.0)

    weights_file = folder / "adapter_model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:-10])
    assert "truncated" in encoder_lora.adapter_problem(str(folder))
    with pytest.raises(encoder_lora.AdapterError, match="truncated"):
        encoder_lora.read_adapter(str(folder))
    assert encoder_lora.adapter_problem(str(tmp_path / "nothing")) == "no such folder"

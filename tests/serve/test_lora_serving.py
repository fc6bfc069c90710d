"""LoRA adapters served on one base encoder: the real Serve app on loopback, checked against peft's merged models.

Four random adapters on the tiny encoder (each merged by peft into its own sentence-transformers folder, the
reference), one adapter that claims the tiny encoder as its base but was made on another encoder, one that is
truncated after the server started, and a plain model beside them.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import merged_encoder, random_encoder_adapter
from tests.serve.test_app import TEXTS, http

pytestmark = pytest.mark.timeout(300)

APP = "bootembed-lora"
ADAPTERS = ("demo/yor", "demo/kha", "demo/quc", "demo/swh")
MIN_COSINE = 0.9999


def other_encoder(tiny_encoder: str, path: Path) -> str:
    """A copy of the tiny encoder with other weights (the same shapes)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_encoder, path)
    weights = load_file(path / "model.safetensors")
    generator = torch.Generator().manual_seed(1)
    for tensor in weights.values():
        tensor += 0.05 * torch.randn(tensor.shape, generator=generator)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return str(path)


@pytest.fixture(scope="module")
def lora(serve_url, tmp_path_factory, tiny_encoder):
    """{"url", "adapters": {name: folder}, "merged": {name: folder}}, served: 4 adapters + wrong base + late-broken."""
    from ray import serve

    from serve.app import ADAPTERS as DEPLOYMENT
    from serve.app import API_KEY_ENV, AppArgs, build_app

    root = tmp_path_factory.mktemp("lora")
    adapters = {name: random_encoder_adapter(tiny_encoder, str(root / name.replace("/", "-")), seed=i)
                for i, name in enumerate(ADAPTERS)}
    merged = {name: merged_encoder(tiny_encoder, folder, str(root / f"merged-{i}")) for i, (name, folder) in
              enumerate(adapters.items())}
    other = other_encoder(tiny_encoder, root / "other")
    wrong = random_encoder_adapter(tiny_encoder, str(root / "wrong-base"), seed=9, trained_on=other)
    late = random_encoder_adapter(tiny_encoder, str(root / "late"), seed=10)

    os.environ.pop(API_KEY_ENV, None)
    try:
        models = {**adapters, "demo/wrong": wrong, "demo/late": late, "plain": tiny_encoder}
        # max_adapters_per_replica 3 < 4 adapters in use: the stream below also evicts and reloads adapters.
        serve.run(build_app(AppArgs(models=models, max_adapters_per_replica=3, batch_wait_timeout_s=0.05)), name=APP,
                  route_prefix="/")
        deployments = serve.status().applications[APP].deployments
        assert set(deployments) == {"Api", DEPLOYMENT, "Encoder-plain"}, deployments
        yield {"url": serve_url, "adapters": adapters, "merged": merged, "late": late,
               "base": tiny_encoder}
    finally:
        serve.delete(APP)


@pytest.fixture(scope="module")
def merged_vectors(lora):
    from sentence_transformers import SentenceTransformer

    models = {name: SentenceTransformer(path, device="cpu") for name, path in
              {**lora["merged"], "base": lora["base"]}.items()}
    return lambda name, texts: models[name].encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def embed(lora, model: str, texts: list[str]) -> np.ndarray:
    status, answer = http(lora, "POST", "/v1/embeddings", {"model": model, "input": texts})
    assert status == 200, answer
    assert answer["model"] == model and [d["index"] for d in answer["data"]] == list(range(len(texts)))
    return np.array([d["embedding"] for d in answer["data"]], dtype=np.float32)


def stats() -> dict:
    from ray import serve

    from serve.app import ADAPTERS as DEPLOYMENT

    return serve.get_deployment_handle(DEPLOYMENT, app_name=APP).stats.remote().result(timeout_s=60)


def test_each_adapter_gives_its_merged_models_vectors_in_a_mixed_concurrent_stream(lora, merged_vectors):
    jobs = [(ADAPTERS[i % len(ADAPTERS)], [f"request {i}: {TEXTS[i % 5]}", TEXTS[(i + 2) % 5]]) for i in range(48)]
    before = stats()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: embed(lora, *job), jobs))
    for (model, texts), got in zip(jobs, answers):
        cosine = np.sum(got * merged_vectors(model, texts), axis=1)
        assert cosine.min() >= MIN_COSINE, (model, cosine)
        # ... and not the base's: the adapters really move the vectors, so the check above could fail
        assert np.sum(got * merged_vectors("base", texts), axis=1).max() < 0.999, model
    after = stats()
    assert after["batches"] - before["batches"] < len(jobs), (before, after)  # requests of one adapter shared batches
    assert set(after["loads"]) >= set(ADAPTERS)


def test_token_id_requests_of_several_adapters_in_one_batch_get_each_adapters_vectors(lora, merged_vectors):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lora["base"])
    ids = [tokenizer(t)["input_ids"] for t in TEXTS[:3]]  # the texts' ids as the model reads them (no prompt here)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda name: embed(lora, name, ids), ADAPTERS * 2))
    for name, got in zip(ADAPTERS * 2, answers):
        assert np.sum(got * merged_vectors(name, TEXTS[:3]), axis=1).min() >= MIN_COSINE, name


def test_models_lists_every_adapter_and_the_plain_model(lora):
    status, answer = http(lora, "GET", "/v1/models")
    assert status == 200
    assert sorted(m["id"] for m in answer["data"]) == sorted([*ADAPTERS, "demo/wrong", "demo/late", "plain"])
    entries = {m["id"]: m for m in answer["data"]}
    assert entries["demo/yor"]["adapter"]["id"] == "demo-yor" and "evaluation" not in entries["demo/yor"]["adapter"]
    assert "adapter" not in entries["plain"]


def test_adapters_beyond_the_replicas_lru_are_reloaded_on_use(lora, merged_vectors):
    for name in ADAPTERS:  # 4 adapters through an LRU of 3: the oldest one is dropped and loaded again
        embed(lora, name, TEXTS[:1])
    before = stats()["loads"]
    got = embed(lora, ADAPTERS[0], TEXTS[:2])  # dropped by the loop above (the LRU's oldest)
    assert stats()["loads"][ADAPTERS[0]] == before[ADAPTERS[0]] + 1
    assert np.sum(got * merged_vectors(ADAPTERS[0], TEXTS[:2]), axis=1).min() >= MIN_COSINE
    assert max(stats()["load_seconds"].values()) < 5  # a few KB read, not a model load (no timing goal asserted here)


def test_unknown_adapter_is_404(lora):
    status, answer = http(lora, "POST", "/v1/embeddings", {"model": "demo/zul", "input": ["Sawubona"]})
    assert status == 404, answer
    assert answer["error"]["code"] == "model_not_found" and "'demo/zul'" in answer["error"]["message"]


def test_adapter_trained_on_another_base_is_400_never_vectors(lora, merged_vectors):
    for _ in range(2):
        status, answer = http(lora, "POST", "/v1/embeddings", {"model": "demo/wrong", "input": ["hi"]})
        assert status == 400, answer
        err = answer["error"]
        assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "adapter_base_mismatch", "model")
        assert err["message"].startswith("adapter 'demo/wrong' was trained on another encoder"), err["message"]
    got = embed(lora, "demo/kha", TEXTS[:2])  # the others keep serving
    assert np.sum(got * merged_vectors("demo/kha", TEXTS[:2]), axis=1).min() >= MIN_COSINE


def test_adapter_truncated_after_start_is_503_and_the_others_keep_serving(lora, merged_vectors):
    weights = Path(lora["late"]) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    status, answer = http(lora, "POST", "/v1/embeddings", {"model": "demo/late", "input": ["hi"]})
    assert status == 503, answer
    assert answer["error"]["code"] == "model_not_available"
    message = answer["error"]["message"]
    assert message.startswith("adapter 'demo/late' could not be loaded") and "truncated" in message, message
    got = embed(lora, "demo/yor", TEXTS[:2])
    assert np.sum(got * merged_vectors("demo/yor", TEXTS[:2]), axis=1).min() >= MIN_COSINE


# --- refused before anything starts (no Ray) --------------------------------------------------------


def test_bad_adapter_folders_are_refused_at_start_each_named(tmp_path, tiny_encoder):
    from serve.app import AppArgs, build_app

    good = random_encoder_adapter(tiny_encoder, str(tmp_path / "good"), seed=0)
    truncated = random_encoder_adapter(tiny_encoder, str(tmp_path / "truncated"), seed=1)
    weights = Path(truncated) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    unrecorded = random_encoder_adapter(tiny_encoder, str(tmp_path / "unrecorded"), seed=2)
    os.remove(Path(unrecorded) / "bootembed_lora.json")
    no_base = random_encoder_adapter(tiny_encoder, str(tmp_path / "no-base"), seed=3)
    meta = json.loads((Path(no_base) / "bootembed_lora.json").read_text())
    (Path(no_base) / "bootembed_lora.json").write_text(json.dumps({**meta, "base": "../nowhere"}))
    models = {"r/good": good, "r/truncated": truncated, "r/unrecorded": unrecorded, "r/no-base": no_base}
    with pytest.raises(FileNotFoundError) as err:
        build_app(AppArgs(models=models))
    message = str(err.value)
    assert "LoRA adapter r/truncated" in message and "truncated" in message
    assert "LoRA adapter r/unrecorded" in message and "bootembed_lora.json" in message
    assert "LoRA adapter r/no-base: its base encoder" in message and "nowhere" in message
    assert "r/good" not in message
    with pytest.raises(ValueError, match="backend torch, quantize none only"):
        build_app(AppArgs(models={"r/good": good}, quantize="int8"))


def test_models_entry_of_an_evaluated_run_adapter_carries_its_numbers_while_its_train_stage_is_current(tmp_path, tiny_encoder):
    from pipeline import encoder_lora
    from serve.app import adapter_cards

    run = tmp_path / "demo"
    lora_dir = run / "train" / "lora"
    shutil.copytree(tiny_encoder, lora_dir / "base")
    folder = random_encoder_adapter(str(lora_dir / "base"), str(lora_dir / "yor"), seed=0)
    meta = json.loads(Path(folder, encoder_lora.META).read_text()) | {"language": "yor", "strategy": None}
    Path(folder, encoder_lora.META).write_text(json.dumps(meta))
    loose = random_encoder_adapter(tiny_encoder, str(tmp_path / "loose"), seed=1)  # in no run
    numbers = {"scores": {"retrieval": {"x->eng acc@1": 0.7, "eng->x acc@1": 0.6, "n": 23}}}
    (run / "evaluate").mkdir()
    (run / "evaluate" / "adapters.json").write_text(json.dumps({"train_fingerprint": "t1", "adapters": {"yor": numbers}}))
    (run / "train" / "manifest.json").write_text(json.dumps({"fingerprint": "t1"}))

    cards = adapter_cards({"demo/yor": folder, "loose": loose})
    assert cards["demo/yor"] == {"adapter": {"id": "yor", "language": "yor", "strategy": None,
                                             "base_sha256": meta["base_sha256"], "evaluation": numbers}}
    assert cards["loose"]["adapter"]["id"] == "loose" and "evaluation" not in cards["loose"]["adapter"]
    (run / "train" / "manifest.json").write_text(json.dumps({"fingerprint": "t2"}))  # retrained: those numbers are stale
    assert "evaluation" not in adapter_cards({"demo/yor": folder})["demo/yor"]["adapter"]

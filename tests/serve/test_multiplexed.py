"""Many models, one multiplexed deployment: started for real on loopback, once per module.

Three per-language copies of MiniLM that answer differently (one untouched, one with perturbed weights, one with CLS
pooling) and one folder whose weights are garbage, served by replicas that keep at most 2 models each.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.serve.test_app import TEXTS, check_embeddings, http, truncated

pytestmark = pytest.mark.timeout(300)

APP = "bootembed-many"
LANGUAGES = ("yor", "kha", "quc")


def minilm_copy(minilm_path: str, path: Path, change: str | None) -> str:
    """A copy of the MiniLM folder; `change` = "weights" adds noise to its last layer, "pooling" makes it pool [CLS]."""
    shutil.copytree(minilm_path, path)
    if change == "weights":
        import torch
        from safetensors.torch import load_file, save_file

        generator = torch.Generator().manual_seed(0)
        weights = load_file(path / "model.safetensors")
        for name, tensor in weights.items():
            if "layer.5." in name and name.endswith("weight"):
                tensor += 0.05 * torch.randn(tensor.shape, generator=generator)
        save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    elif change == "pooling":
        config = json.loads((path / "1_Pooling" / "config.json").read_text())
        config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
        (path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def many(serve_url, tmp_path_factory, minilm_path, tiny_encoder):
    """{"url", "models"}: four models (one broken) behind one multiplexed deployment of 1 replica x 2 models."""
    from ray import serve

    from serve.app import API_KEY_ENV, MULTIPLEXED, AppArgs, build_app

    root = tmp_path_factory.mktemp("many")
    models = {lang: minilm_copy(minilm_path, root / lang, change)
              for lang, change in zip(LANGUAGES, (None, "weights", "pooling"))}
    broken = Path(shutil.copytree(tiny_encoder, root / "broken"))
    for weights in broken.rglob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    models["broken"] = str(broken)

    os.environ.pop(API_KEY_ENV, None)  # a developer's own key would otherwise be required here
    try:
        # 4 models > multiplex_above=3: the app chooses one multiplexed deployment by itself.
        serve.run(build_app(AppArgs(models=models, multiplex_above=3, max_models_per_replica=2)), name=APP,
                  route_prefix="/")
        deployments = serve.status().applications[APP].deployments
        assert set(deployments) == {"Api", MULTIPLEXED}, deployments
        yield {"url": serve_url, "models": models}
    finally:
        serve.delete(APP)


@pytest.fixture(scope="module")
def reference(many):
    from sentence_transformers import SentenceTransformer

    st = {lang: SentenceTransformer(many["models"][lang], device="cpu") for lang in LANGUAGES}
    return lambda model, texts: st[model].encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def stats(app: str = APP) -> dict:
    from ray import serve

    from serve.app import MULTIPLEXED

    return serve.get_deployment_handle(MULTIPLEXED, app_name=app).stats.remote().result(timeout_s=60)


def embed(many, model: str, texts: list[str], **extra) -> dict:
    status, answer = http(many, "POST", "/v1/embeddings", {"model": model, "input": texts, **extra})
    assert status == 200, answer
    return answer


def test_each_model_answers_with_its_own_vectors(many, reference):
    got = {}
    for lang in LANGUAGES:
        answer = embed(many, lang, TEXTS)
        check_embeddings(answer, lang, TEXTS, reference)  # each model's own sentence-transformers vectors, to 1e-5
        got[lang] = np.array([d["embedding"] for d in answer["data"]])
    # The three really differ, so a request routed to the wrong model could not pass the check above.
    assert not np.allclose(got["yor"], got["kha"], atol=1e-3) and not np.allclose(got["yor"], got["quc"], atol=1e-3)


def test_models_lists_every_model_and_dimensions_work(many, reference):
    status, answer = http(many, "GET", "/v1/models")
    assert status == 200
    assert sorted(m["id"] for m in answer["data"]) == ["broken", "kha", "quc", "yor"]
    answer = embed(many, "kha", TEXTS[:3], dimensions=16)
    got = np.array([d["embedding"] for d in answer["data"]])
    np.testing.assert_allclose(got, truncated(reference("kha", TEXTS[:3]), 16), atol=1e-5, rtol=0)


def test_concurrent_requests_for_two_models_are_batched_per_model(many, reference):
    jobs = [(("yor", "kha")[i % 2], [f"request {i}: {TEXTS[i % 5]}", TEXTS[(i + 1) % 5]]) for i in range(24)]
    before = stats()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda job: embed(many, *job), jobs))
    for (model, texts), answer in zip(jobs, answers):
        check_embeddings(answer, model, texts, reference)
    after = stats()
    assert after["batches"] - before["batches"] < len(jobs), (before, after)  # some requests shared a batch


def test_least_recently_used_model_is_dropped_beyond_max_models_per_replica(many, reference):
    embed(many, "yor", TEXTS[:1])
    embed(many, "kha", TEXTS[:1])  # the replica holds yor and kha, kha the more recent
    before = stats()["loads"]
    for lang in ("quc", "kha", "yor"):  # quc replaces yor; kha is still there; yor comes back in place of quc
        check_embeddings(embed(many, lang, TEXTS[:2]), lang, TEXTS[:2], reference)
    after = stats()["loads"]
    assert {lang: after.get(lang, 0) - before.get(lang, 0) for lang in LANGUAGES} == {"yor": 1, "kha": 0, "quc": 1}


def test_unknown_model_is_404_and_the_server_keeps_answering(many, reference):
    status, answer = http(many, "POST", "/v1/embeddings", {"model": "zul", "input": ["Sawubona"]})
    assert status == 404, answer
    assert answer["error"]["code"] == "model_not_found" and answer["error"]["param"] == "model"
    assert "'zul'" in answer["error"]["message"] and "yor" in answer["error"]["message"]
    check_embeddings(embed(many, "quc", TEXTS[:2]), "quc", TEXTS[:2], reference)


def test_a_model_that_cannot_load_is_503_and_the_others_keep_serving(many, reference):
    for _ in range(2):  # not cached as a failure, not fatal to the replica
        status, answer = http(many, "POST", "/v1/embeddings", {"model": "broken", "input": ["hi"]})
        assert status == 503, answer
        err = answer["error"]
        assert (err["type"], err["code"]) == ("server_error", "model_not_available")
        assert "'broken' could not be loaded" in err["message"]
        check_embeddings(embed(many, "yor", TEXTS[:2]), "yor", TEXTS[:2], reference)

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sentence_transformers import SentenceTransformer

from pipeline import train

pytestmark = pytest.mark.timeout(600)

WORDS = ["river", "mountain", "school", "market", "doctor", "rain", "music", "farm", "bread", "letter", "train", "garden",
         "church", "forest", "judge", "child"]


@pytest.fixture
def triplets(tmp_path):
    """Learnable triplets: the positive shares the anchor's topic word, the negative does not."""
    rows = [{"id": str(i), "lang": "yor", "strategy": "icl", "anchor": f"the {w} is near", "positive": f"a {w} nearby",
             "negative": f"a {WORDS[(i + 5) % len(WORDS)]} far away"} for i, w in enumerate(WORDS)]
    path = tmp_path / "triplets.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def train_config(make_config, encoder, **train_fields):
    fields = {"encoder": encoder, "batch_size": 8, "epochs": 3, "lr": 1e-3, "cpus_per_worker": 0.5, "max_length": 16,
              "human_nli_baseline": False}
    return make_config(train={**fields, **train_fields})


def test_two_gloo_workers_train_and_export_a_loadable_sentence_transformer(ray_local, make_config, tiny_encoder, triplets, tmp_path):
    cfg = train_config(make_config, tiny_encoder, num_workers=2)
    result = train.run(cfg, {"triplets": triplets}, str(tmp_path / "train"))

    losses = [epoch["loss"] for epoch in result.details["variants"]["icl"]["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    model_dir = tmp_path / "train" / "models" / "icl"
    assert result.outputs["models"] == str(tmp_path / "train" / "models")
    model = SentenceTransformer(str(model_dir), device="cpu")
    base = SentenceTransformer(tiny_encoder, device="cpu")
    texts = ["the river is near", "a river nearby"]
    trained_vecs = model.encode(texts)
    assert trained_vecs.shape == (2, 32)
    assert np.allclose(np.linalg.norm(trained_vecs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(trained_vecs, base.encode(["query: " + t for t in texts], normalize_embeddings=True), atol=1e-3)
    # The prefix is the exported model's default prompt: encode(t) == encode(t, prompt="query: ").
    assert np.allclose(trained_vecs, model.encode(texts, prompt="query: "), atol=1e-6)
    assert "InfoNCE" in (model_dir / "BOOTEMBED.md").read_text()
    # Trained without a pooler, exported and reloaded without one (no random weights in the folder).
    assert '"add_pooling_layer": false' in (model_dir / "sentence_bert_config.json").read_text()
    assert not any("pooler" in name for name, _ in model[0].auto_model.named_parameters())


def test_a_rerun_with_the_same_inputs_resumes_from_the_last_checkpoint(ray_local, make_config, tiny_encoder, triplets, tmp_path):
    """Training is deterministic, so equal models alone would pass a rerun from scratch too: the rerun must train no
    step, i.e. save no checkpoint and keep the first run's record of its epochs (wall times included)."""
    import glob
    import os

    def checkpoint_files() -> dict[str, int]:
        pattern = str(tmp_path / "train" / "checkpoints" / "*" / "checkpoint_*" / "**")
        return {p: os.stat(p).st_mtime_ns for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)}

    cfg = train_config(make_config, tiny_encoder, epochs=2)
    first = train.run(cfg, {"triplets": triplets}, str(tmp_path / "train"))
    saved = checkpoint_files()
    assert any(p.endswith("state.pt") for p in saved), saved
    again = train.run(cfg, {"triplets": triplets}, str(tmp_path / "train"))

    assert checkpoint_files() == saved, "every trained epoch saves a checkpoint: the rerun saved one, so it trained"
    history = first.details["variants"]["icl"]["epochs"]
    assert [e["epoch"] for e in history] == [0, 1]
    assert again.details["variants"]["icl"]["epochs"] == history, "the rerun's epochs are the first run's, not retrained"
    a = SentenceTransformer(first.outputs["models"] + "/icl", device="cpu").encode(["a river nearby"])
    b = SentenceTransformer(again.outputs["models"] + "/icl", device="cpu").encode(["a river nearby"])
    assert np.allclose(a, b, atol=1e-6)


def test_too_few_triplets_is_a_clear_error(make_config, tiny_encoder, tmp_path):
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({"anchor": ["a"], "positive": ["b"], "negative": ["c"]}), path)
    with pytest.raises(ValueError, match=r"holds no strategy with at least 2 triplets.*icl.*1 triplet\(s\).*filter/dropped.parquet"):
        train.run(train_config(make_config, tiny_encoder), {"triplets": str(path)}, str(tmp_path / "train"))


def test_each_strategy_gets_its_own_set_and_the_baseline_matches_the_largest(make_config, tiny_encoder, tmp_path):
    rows = [{"id": str(i), "lang": "yor", "strategy": s, "anchor": f"a{i}", "positive": f"p{i}", "negative": f"n{i}"}
            for i, s in enumerate(["icl"] * 5 + ["xllora"] * 9 + ["composition"])]
    path = tmp_path / "triplets.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    cfg = train_config(make_config, tiny_encoder, human_nli_baseline=True)
    cfg.synthesis.strategies = ["icl", "composition", "xllora"]
    sets, skipped = train.training_sets(cfg, str(path), str(tmp_path / "data"))

    assert list(sets) == ["human_nli", "icl", "xllora"]
    assert set(pq.read_table(sets["xllora"]).column("strategy").to_pylist()) == {"xllora"}
    assert pq.read_metadata(sets["icl"]).num_rows == 5
    baseline = pq.read_table(sets["human_nli"]).to_pylist()
    assert len(baseline) == 9 and len({t["anchor"] for t in baseline}) == 9, "as many human-made triplets as the largest set"
    assert all(t["positive"] and t["negative"] and t["positive"] != t["negative"] for t in baseline)
    assert "composition" in skipped and "1 triplet(s)" in skipped["composition"]


@pytest.mark.parametrize("pooling", ["mean", "avg_first_last"])
def test_the_exported_model_pools_exactly_as_training_did(make_config, tiny_encoder, tmp_path, pooling):
    import torch

    cfg = train_config(make_config, tiny_encoder, pooling=pooling)
    out = tmp_path / pooling
    train.export_sentence_transformer(tiny_encoder, None, cfg, str(out), {"variant": "icl", "triplets": 0, "final_loss": 0.0})
    texts = ["the river is near", "a doctor far away from the market"]
    tokenizer, encoder = train.load_encoder(tiny_encoder, freeze_embeddings=False)
    with torch.no_grad():
        trained_view, _, _ = train.embed_triplets(train.triplet_encoder(encoder, pooling).eval(), tokenizer, {"anchor": texts, "positive": texts, "negative": texts},
                                                  cfg.train.model_dump())
    expected = torch.nn.functional.normalize(trained_view, dim=-1).numpy()

    exported = SentenceTransformer(str(out), device="cpu")  # plain sentence-transformers modules, no bootembed code
    assert np.allclose(exported.encode(texts), expected, atol=1e-5)
    last_layer_only = SentenceTransformer(tiny_encoder, device="cpu").encode(["query: " + t for t in texts], normalize_embeddings=True)
    assert np.allclose(exported.encode(texts), last_layer_only, atol=1e-5) == (pooling == "mean")


def our_train_workers() -> list:
    """Ray Train worker processes of this test session's Ray instance (other Ray instances may train beside it)."""
    import psutil
    import ray
    from ray._private import ray_constants

    raylet = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    return [p for p in psutil.Process(raylet).children(recursive=True) if "TrainWorker" in " ".join(p.cmdline())]


@pytest.mark.slow
def test_a_killed_training_worker_is_replaced_and_training_resumes_from_its_checkpoint(ray_local, make_config, tiny_encoder,
                                                                                       triplets, tmp_path):
    import glob
    import os
    import signal
    import threading
    import time

    cfg = train_config(make_config, tiny_encoder, epochs=40, max_failures=2)
    killed: list[int] = []

    def kill_a_worker_after_the_first_checkpoint():
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            if glob.glob(str(tmp_path / "train" / "checkpoints" / "*" / "checkpoint_*")):
                for worker in our_train_workers():
                    os.kill(worker.pid, signal.SIGKILL)  # as a lost node would
                    killed.append(worker.pid)
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint)
    killer.start()
    result = train.run(cfg, {"triplets": triplets}, str(tmp_path / "train"))
    killer.join()

    assert killed, "the test never found a training worker to kill"
    epochs = [e["epoch"] for e in result.details["variants"]["icl"]["epochs"]]
    assert epochs == list(range(40)), "every epoch once: resumed from the checkpoint, none lost, none repeated"
    assert SentenceTransformer(result.outputs["models"] + "/icl", device="cpu").encode(["a river nearby"]).shape == (1, 32)

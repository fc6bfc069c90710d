import signal

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


@pytest.fixture
def two_models_triplets(tmp_path):
    """The learnable triplets twice, as two strategies: the stage trains a model for each."""
    rows = [{"id": f"{s}{i}", "lang": "yor", "strategy": s, "anchor": f"the {w} is near", "positive": f"a {w} nearby",
             "negative": f"a {WORDS[(i + 5) % len(WORDS)]} far away"} for s in ("icl", "parallel") for i, w in enumerate(WORDS)]
    path = tmp_path / "two_models.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def train_config(make_config, encoder, **train_fields):
    fields = {"encoder": encoder, "batch_size": 8, "epochs": 3, "lr": 1e-3, "cpus_per_worker": 0.5, "max_length": 16,
              "human_nli_baseline": False}
    return make_config(train={**fields, **train_fields})


def test_two_gloo_workers_train_with_the_cached_loss_and_export_a_loadable_sentence_transformer(ray_local, make_config,
                                                                                               tiny_encoder, triplets, tmp_path):
    """train.mini_batch_size: GradCache in mini-batches of 2 texts, negatives gathered across two gloo workers (the
    uncached loss's DDP gradients are checked against the cached one's in test_losses.py, without a fit)."""
    cfg = train_config(make_config, tiny_encoder, num_workers=2, mini_batch_size=2)
    ctrl_c = signal.getsignal(signal.SIGINT)
    result = train.run(cfg, {"triplets": triplets}, str(tmp_path / "train"))
    assert signal.getsignal(signal.SIGINT) is ctrl_c, "Ray Train's Ctrl-C handler is not left behind after the fit"

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


def test_a_rerun_resumes_from_the_last_checkpoint_and_a_forced_one_trains_anew(ray_local, make_config, tiny_encoder,
                                                                                two_models_triplets, tmp_path):
    """Training is deterministic, so equal models alone would pass a rerun from scratch too: the rerun must train no
    step of either model, i.e. save no checkpoint and keep the first run's record of each model's epochs. Then
    `bootembed train --force`: the finished Ray Train run of the same name is discarded, not resumed."""
    import glob
    import os

    from pipeline.manifest import write_json
    from pipeline.run import manifest_path, run_stage, stage_by_name

    cfg = train_config(make_config, tiny_encoder, epochs=2)
    cfg.synthesis.strategies = ["icl", "parallel"]
    out_dir = f"{cfg.run_dir}/train"  # the stage's own folder: the forced rerun below must find this work to discard

    def checkpoint_files() -> dict[str, int]:
        pattern = f"{out_dir}/checkpoints/*/checkpoint_*/**"
        return {p: os.stat(p).st_mtime_ns for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)}

    first = train.run(cfg, {"triplets": two_models_triplets}, out_dir)
    saved = checkpoint_files()
    # One Ray Train run for both models; its last checkpoint holds both models' final weights.
    assert {os.path.basename(p) for p in saved} == {"progress.json", "final-icl.pt", "final-parallel.pt"}, saved
    again = train.run(cfg, {"triplets": two_models_triplets}, out_dir)

    assert checkpoint_files() == saved, "every trained epoch saves a checkpoint: the rerun saved one, so it trained"
    for variant in ("icl", "parallel"):
        history = first.details["variants"][variant]["epochs"]
        assert [e["epoch"] for e in history] == [0, 1]
        assert again.details["variants"][variant]["epochs"] == history, "the rerun's epochs are the first run's"
        a = SentenceTransformer(f"{first.outputs['models']}/{variant}", device="cpu").encode(["a river nearby"])
        b = SentenceTransformer(f"{again.outputs['models']}/{variant}", device="cpu").encode(["a river nearby"])
        assert np.allclose(a, b, atol=1e-6)
    # Same triplets, same seed, same base encoder: each model is trained as if it were the only one.
    icl = SentenceTransformer(f"{first.outputs['models']}/icl", device="cpu").encode(["a river nearby"])
    parallel = SentenceTransformer(f"{first.outputs['models']}/parallel", device="cpu").encode(["a river nearby"])
    assert np.allclose(icl, parallel, atol=1e-6), "the second model starts from the base encoder, not from the first"

    write_json(manifest_path(cfg, "filter"), {"fingerprint": "filter", "outputs": {"triplets": two_models_triplets}})
    forced = run_stage(cfg, stage_by_name("train"), force=True, log=lambda _: None)
    for variant in ("icl", "parallel"):
        epochs = forced["details"]["variants"][variant]["epochs"]
        assert len(epochs) == 2 and epochs != first.details["variants"][variant]["epochs"], "trained anew (its own wall time)"
    rewritten = checkpoint_files()
    assert rewritten and not set(rewritten.items()) & set(saved.items()), "the forced run wrote its own checkpoints"


def test_epoch_batches_are_the_batches_ray_data_streamed(ray_local):
    """Training used to stream the triplets through Ray Data's local shuffle; the worker now draws the same batches
    itself, so the same seed still trains the same model. Ray Data's order for a one-block dataset pins it."""
    table = pa.table({"row": list(range(37))})
    for seed, batch_size in ((0, 8), (3, 16), (7, 5)):
        streamed = [list(b["row"]) for b in ray_local.data.from_arrow(table).iter_batches(
            batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=4 * batch_size, local_shuffle_seed=seed)]
        assert streamed == [list(b) for b in train.epoch_batches(37, batch_size, seed)], (seed, batch_size)


def test_each_worker_takes_an_equal_share_of_the_global_batch_or_all_skip_it():
    import numpy as np

    rows = np.arange(10, 17)  # 7 rows over 2 workers: 3 each, the 7th left out so the gathers have equal shapes
    assert [list(train.worker_rows(rows, 2, r)) for r in (0, 1)] == [[10, 11, 12], [13, 14, 15]]
    assert train.worker_rows(np.arange(3), 2, 0) is None and train.worker_rows(np.arange(3), 2, 1) is None
    assert list(train.worker_rows(np.arange(3), 1, 0)) == [0, 1, 2]


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
                                                  cfg.train, cfg.train.max_length)
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
                                                                                       two_models_triplets, tmp_path):
    """Killed while training the second of two models: the first is not retrained, the second resumes mid-way."""
    import glob
    import json
    import os
    import signal
    import threading
    import time

    cfg = train_config(make_config, tiny_encoder, epochs=8, max_failures=2)
    cfg.synthesis.strategies = ["icl", "parallel"]
    killed: list[int] = []

    def training_the_second_model() -> bool:
        for progress in glob.glob(str(tmp_path / "train" / "checkpoints" / "*" / "checkpoint_*" / "progress.json")):
            try:
                with open(progress) as f:
                    current = json.load(f)["current"]
            except (OSError, ValueError):  # being written or already replaced
                continue
            if current and current["variant"] == "parallel":
                return True
        return False

    def kill_a_worker_in_the_second_model():
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            if training_the_second_model():
                for worker in our_train_workers():
                    os.kill(worker.pid, signal.SIGKILL)  # as a lost node would
                    killed.append(worker.pid)
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_a_worker_in_the_second_model)
    killer.start()
    result = train.run(cfg, {"triplets": two_models_triplets}, str(tmp_path / "train"))
    killer.join()

    assert killed, "the test never found a training worker to kill"
    for variant in ("icl", "parallel"):
        epochs = [e["epoch"] for e in result.details["variants"][variant]["epochs"]]
        assert epochs == list(range(8)), f"{variant}: every epoch once: resumed from the checkpoint, none lost, none repeated"
        model = SentenceTransformer(f"{result.outputs['models']}/{variant}", device="cpu")
        assert model.encode(["a river nearby"]).shape == (1, 32)


def test_a_mini_batch_as_large_as_the_worker_batch_is_a_clear_error(make_config, tiny_encoder):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.mini_batch_size \(16\) must be smaller than the batch each worker embeds, "
                                          r"train.batch_size / train.num_workers \(16\); leave it empty"):
        train_config(make_config, tiny_encoder, batch_size=32, num_workers=2, mini_batch_size=16)

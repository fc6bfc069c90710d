import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sentence_transformers import SentenceTransformer

from pipeline.run import (
    STAGE_NAMES,
    manifest_path,
    ClusterResourceError,
    StageInputError,
    check_cluster_resources,
    output_path,
    run_pipeline,
    run_stage,
    stage_by_name,
)


# First in its file on purpose: while it runs (the suite's longest test), the file's other tests keep this process's
# queue full, so pytest-xdist hands the next long file to the other process instead of queueing it behind this one.
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_whole_pipeline_on_the_bundled_real_models(ray_local, make_config):
    """seeds -> adapters -> synthesize (SmolLM2: icl, xllora, parallel with generated negatives) -> filter -> train
    (multilingual-e5-small, one encoder per strategy + the human_nli baseline) -> evaluate (in bf16), then resume.

    The composition strategy's adapters (three language and two task adapters, composed per language) run on the tiny
    generator in test_adapters.py and test_synthesize.py: here they doubled the adapters stage and added an encoder."""
    cfg = make_config(
        languages=["yor", "quc"],  # two languages: every code path of several, at two thirds of three's time
        seeds={"max_per_language": 4},
        generator={"max_new_tokens": 16, "batch_size": 12},
        synthesis={"num_shots": 1, "strategies": ["icl", "xllora", "parallel"], "parallel_negatives": "generate"},
        adapters={"steps": 1, "batch_size": 4},
        filter={"language_check": False},  # 4 anchors a language: keep enough triplets for every strategy to train
        train={"batch_size": 4, "epochs": 1},
        # every task runs, on small samples: five encoders are evaluated twice here (the rerun below, from the vector cache)
        evaluate={"bootstrap_samples": 100, "classification_max_test": 20, "classification_max_train": 40, "bli_max_words": 20,
                  "precision": "bf16"},  # fp32 is every other evaluation test's; bf16 on the real encoder is checked here
    )
    logs = []
    manifests = run_pipeline(cfg, log=logs.append)
    assert list(manifests) == STAGE_NAMES
    assert manifests["adapters"]["counts"] == {"adapters": 2, "trained": 2}  # xllora's, one per role
    assert manifests["seeds"]["counts"]["anchors"] == 8
    referenced = manifests["seeds"]["counts"]["with_reference"]
    assert referenced >= 5, "most UDHR anchors carry their English unit"
    # parallel: one generated negative per referenced anchor, no generated positive
    assert manifests["synthesize"]["counts"]["requests"] == 8 * 2 * 2 + referenced
    assert manifests["synthesize"]["counts"]["rows"] == 16 + referenced
    assert manifests["filter"]["counts"]["kept"] + manifests["filter"]["counts"]["dropped"] == 16 + referenced

    out = lambda stage, name: output_path(cfg, manifests[stage], name)  # noqa: E731
    answers = pq.read_table(out("synthesize", "answers")).to_pylist()
    used = {(a["strategy"], a["role"], a["lang"]): a["adapter"] for a in answers}
    assert used[("icl", "positive", "quc")] == "" and used[("xllora", "negative", "yor")] == "xllora-negative"
    fidelity = json.loads(Path(out("filter", "fidelity")).read_text())["per_strategy"]
    assert fidelity["parallel"]["positive_nearest"] == 1.0 and fidelity["parallel"]["chrf"] == pytest.approx(100.0)
    assert set(fidelity) == {"icl", "xllora", "parallel"}
    # No held-out unit, in any language, reached the training data (anchors, positives, negatives alike).
    from pipeline.corpus import load_udhr
    from pipeline.seeds import split_sentences

    held = set(manifests["seeds"]["details"]["eval_units"])
    held_text = {piece for r in load_udhr(["yor", "kha", "quc", "eng"]).to_pylist() if r["unit"] in held
                 for piece in [r["text"], *split_sentences(r["text"])]}
    trained_on = pq.read_table(out("filter", "triplets")).to_pylist()
    assert trained_on and not {r[c] for r in trained_on for c in ("anchor", "positive", "negative")} & held_text
    metrics = json.loads(Path(out("evaluate", "metrics")).read_text())
    assert metrics["verdict"]["task"] == "retrieval" and metrics["verdict"]["outcome"] in ("helped", "no_change", "hurt")
    trained = manifests["train"]["details"]["variants"]
    assert list(metrics["models"]) == ["base", *trained] and "human_nli" in trained and len(trained) >= 2
    for model in metrics["models"].values():
        assert set(model["per_language"]) == {"yor", "quc"}
        assert all(0.0 <= m["to_eng"] <= 1.0 and m["queries"] > 10 for m in model["per_language"].values())
    # The base encoder reproduces the known headroom: Yoruba well above K'iche'.
    base = metrics["models"]["base"]["per_language"]
    assert base["yor"]["to_eng"] > base["quc"]["to_eng"]
    report = Path(out("evaluate", "report")).read_text()
    assert "| yor |" in report and "base x->eng" in report and "human_nli x->eng" in report
    assert all(f"| {s} | 8 |" in report for s in ("icl", "xllora")), "per-strategy counts in the report"
    assert metrics["precision"] == "bf16" and "Encoders run in bf16" in report
    assert Path(out("evaluate", "plot")).stat().st_size > 10_000
    for variant in trained:
        assert SentenceTransformer(f"{out('train', 'models')}/{variant}", device="cpu").encode(["Ẹ kú àárọ̀"]).shape == (1, 384)

    logs.clear()
    again = run_pipeline(cfg, log=logs.append)
    assert again == manifests and all("up to date" in line for line in logs)

    logs.clear()
    changed = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"bootstrap_samples": 50})})
    rerun_manifests = run_pipeline(changed, log=logs.append)
    rerun = [line.split("]")[0][1:] for line in logs if "running" in line]
    assert rerun == ["evaluate"], "only the stage that reads the changed field reruns"
    assert rerun_manifests["train"] == manifests["train"]


def test_a_finished_stage_is_skipped_until_its_config_changes(make_config):
    logs = []
    cfg = make_config(seeds={"max_per_language": 5})
    first = run_pipeline(cfg, ["seeds"], log=logs.append)["seeds"]
    again = run_pipeline(cfg, ["seeds"], log=logs.append)["seeds"]
    assert again == first
    assert logs[-1].startswith("[seeds] up to date")
    changed = run_pipeline(make_config(seeds={"max_per_language": 6}), ["seeds"], log=logs.append)["seeds"]
    assert changed["fingerprint"] != first["fingerprint"] and changed["counts"]["anchors"] == 12
    unrelated = run_pipeline(make_config(seeds={"max_per_language": 6}, train={"epochs": 3}), ["seeds"], log=logs.append)
    assert logs[-1].startswith("[seeds] up to date") and unrelated["seeds"] == changed


def test_a_stage_that_ran_again_makes_the_stages_built_on_it_stale(make_config, tmp_path):
    """`bootembed filter --force` (or a synthesize stage redone after a crash) writes new outputs under the same config:
    what was built on the old ones must run again, not be skipped as up to date."""
    import pyarrow as pa

    from pipeline.manifest import write_json

    generations = tmp_path / "generations.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "1", "lang": "yor", "strategy": "icl", "anchor": "Ẹ kú àárọ̀.", "status": "ok",
                                          "positive": "Good morning to you.", "negative": "Good night to you."}]), generations)
    cfg = make_config(filter={"margin": None, "language_check": False})

    def synthesize_ran(attempt: str) -> None:
        write_json(manifest_path(cfg, "synthesize"),
                   {"fingerprint": "synthesize", "attempt": attempt, "outputs": {"generations": str(generations)}})

    synthesize_ran("first")
    first = run_stage(cfg, stage_by_name("filter"), log=lambda _: None)
    logs = []
    assert run_stage(cfg, stage_by_name("filter"), log=logs.append) == first and "up to date" in logs[-1]
    synthesize_ran("second")
    again = run_stage(cfg, stage_by_name("filter"), log=logs.append)
    assert "running" in logs[-2] and again["fingerprint"] != first["fingerprint"] and again["attempt"] != first["attempt"]


def test_a_copied_run_directory_resumes_from_its_own_files(make_config, tmp_path):
    import shutil

    cfg = make_config(seeds={"max_per_language": 5})
    first = run_pipeline(cfg, ["seeds"])["seeds"]
    assert first["outputs"] == {"train": "seeds/train.parquet", "eval": "seeds/eval.parquet"}
    copy = cfg.model_copy(update={"run_dir": str(tmp_path / "copy")})
    shutil.copytree(cfg.run_dir, copy.run_dir)
    logs = []
    assert run_pipeline(copy, ["seeds"], log=logs.append)["seeds"] == first and "up to date" in logs[-1]
    assert output_path(copy, first, "train") == str(tmp_path / "copy" / "seeds" / "train.parquet")


def test_a_local_ray_instance_listens_on_loopback_only(make_config, tmp_path):
    import os
    import subprocess
    import sys

    config = tmp_path / "run.yaml"
    config.write_text(f"languages: [yor]\nrun_dir: {tmp_path / 'run'}\nray: {{num_cpus: 1}}\n")
    script = ("from pipeline.config import load_config\nfrom pipeline.run import start_ray\n"
              f"start_ray(load_config({str(config)!r}))\nimport ray\nprint(ray.get_runtime_context().gcs_address)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}  # as a user's shell has it
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("127.0.0.1:"), out.stdout


def test_a_stage_before_its_inputs_exist_says_what_to_run(make_config):
    with pytest.raises(StageInputError, match=r"stage 'train' reads the output of 'filter', which has not finished.*bootembed filter CONFIG"):
        run_stage(make_config(), stage_by_name("train"))


def test_a_gpu_config_on_a_cluster_without_gpus_fails_before_training_is_scheduled(ray_local, make_config):
    with pytest.raises(ClusterResourceError, match=r"train.use_gpu is true .* has 0 GPU\(s\); set train.use_gpu=false"):
        check_cluster_resources(make_config(train={"use_gpu": True}), stage_by_name("train"))
    check_cluster_resources(make_config(), stage_by_name("train"))  # the CPU config passes


def test_a_misaligned_evaluation_file_fails_the_run_before_its_first_stage(make_config, tmp_path):
    (tmp_path / "yor.txt").write_text("Ẹ kú àárọ̀\nO dàbọ̀\nẸ ṣé\n")
    (tmp_path / "eng.txt").write_text("Good morning\nGoodbye\n")
    cfg = make_config(evaluate={"parallel": {"yor": [str(tmp_path / "yor.txt"), str(tmp_path / "eng.txt")]}})
    with pytest.raises(ValueError, match=r"not aligned: .*yor.txt has 3 lines, .*eng.txt has 2"):
        run_pipeline(cfg)
    assert not (Path(cfg.run_dir) / "seeds").exists()


def test_a_bad_seed_file_fails_before_anything_is_written(make_config, tmp_path):
    cfg = make_config(seeds={"files": [str(tmp_path / "missing.yor.txt")]})
    with pytest.raises(ValueError, match="missing.yor.txt does not exist"):
        run_pipeline(cfg)
    assert not (Path(cfg.run_dir) / "seeds" / "manifest.json").exists()


@pytest.mark.slow
def test_a_run_kept_in_s3_runs_every_stage_and_resumes_from_the_bucket(ray_local, make_config, s3_bucket, tiny_generator,
                                                                      tiny_encoder, tmp_path):
    import os
    import shutil

    import pyarrow.fs as pafs

    from pipeline.adapter_registry import read_registry
    from pipeline.run import local_stage_dir, mirror_root

    cfg = make_config(
        run_dir=f"{s3_bucket}/runs/tiny", languages=["yor"], seeds={"max_per_language": 6},
        generator={"model": tiny_generator, "max_new_tokens": 8, "batch_size": 8, "temperature": 1.0},
        synthesis={"num_shots": 1, "strategies": ["icl", "xllora"]}, adapters={"steps": 1, "batch_size": 2},
        filter={"language_check": False, "min_chars": 1, "max_chars": 4000},
        train={"encoder": tiny_encoder, "batch_size": 4, "cpus_per_worker": 0.5, "human_nli_baseline": False},
        evaluate={"tasks": [], "bootstrap_samples": 0, "plot": False},
    )
    manifests = run_pipeline(cfg)
    assert list(manifests) == STAGE_NAMES

    fs, root = pafs.FileSystem.from_uri(cfg.run_dir)
    stored = {info.path[len(root) + 1:] for info in fs.get_file_info(pafs.FileSelector(root, recursive=True))}
    assert {f"{stage}/manifest.json" for stage in STAGE_NAMES} <= stored
    assert {"adapters/registry.parquet", "adapters/xllora-positive/adapter_config.json", "synthesize/generations.parquet",
            "filter/triplets.parquet", "train/models/icl/modules.json", "evaluate/report.md"} <= stored
    assert manifests["synthesize"]["outputs"]["generations"] == "synthesize/generations.parquet"  # relative to the run
    assert pq.read_table(output_path(cfg, manifests["seeds"], "train")).num_rows == 6  # read straight from the bucket

    # The bucket is the run: with the local mirror gone, a rerun finds every stage finished, and
    # `bootembed adapters list` reads the registry from the bucket.
    shutil.rmtree(mirror_root(cfg))
    logs = []
    assert run_pipeline(cfg, log=logs.append) == manifests and all("up to date" in line for line in logs)
    registry = read_registry(f"{local_stage_dir(cfg, 'adapters')}/registry.parquet")
    assert {r["name"] for r in registry} == {"xllora-positive", "xllora-negative"}
    assert all(os.path.isfile(f"{r['path']}/adapter_config.json") for r in registry)

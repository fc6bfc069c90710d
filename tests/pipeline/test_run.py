import json
from pathlib import Path

import pytest
from sentence_transformers import SentenceTransformer

from pipeline.run import (
    STAGE_NAMES,
    ClusterResourceError,
    StageInputError,
    check_cluster_resources,
    output_path,
    run_pipeline,
    run_stage,
    stage_by_name,
)


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


def test_a_stage_before_its_inputs_exist_says_what_to_run(make_config):
    with pytest.raises(StageInputError, match=r"stage 'train' reads the output of 'filter', which has not finished.*bootembed filter CONFIG"):
        run_stage(make_config(), stage_by_name("train"))


def test_a_gpu_config_on_a_cluster_without_gpus_fails_before_training_is_scheduled(ray_local, make_config):
    with pytest.raises(ClusterResourceError, match=r"train.use_gpu is true .* has 0 GPU\(s\); set train.use_gpu=false"):
        check_cluster_resources(make_config(train={"use_gpu": True}), stage_by_name("train"))
    check_cluster_resources(make_config(), stage_by_name("train"))  # the CPU config passes


def test_a_bad_seed_file_fails_before_anything_is_written(make_config, tmp_path):
    cfg = make_config(seeds={"files": [str(tmp_path / "missing.yor.txt")]})
    with pytest.raises(ValueError, match="missing.yor.txt does not exist"):
        run_pipeline(cfg)
    assert not (Path(cfg.run_dir) / "seeds" / "manifest.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_whole_pipeline_on_the_bundled_real_models(ray_local, make_config):
    """seeds -> synthesize (SmolLM2) -> filter -> train (multilingual-e5-small) -> evaluate, then resume."""
    cfg = make_config(
        languages=["yor", "kha", "quc"],
        seeds={"max_per_language": 6},
        generator={"max_new_tokens": 24, "batch_size": 9},
        synthesis={"num_shots": 1},
        train={"batch_size": 8, "epochs": 1},
    )
    logs = []
    manifests = run_pipeline(cfg, log=logs.append)
    assert list(manifests) == STAGE_NAMES
    assert manifests["synthesize"]["counts"]["rows"] == manifests["seeds"]["counts"]["anchors"] == 18
    assert manifests["filter"]["counts"]["kept"] + manifests["filter"]["counts"]["dropped"] == 18

    out = lambda stage, name: output_path(cfg, manifests[stage], name)  # noqa: E731
    metrics = json.loads(Path(out("evaluate", "metrics")).read_text())
    assert set(metrics["models"]) == {"base", "trained"}
    for model in metrics["models"].values():
        assert set(model["per_language"]) == {"yor", "kha", "quc"}
        assert all(0.0 <= m["to_eng"] <= 1.0 and m["queries"] > 10 for m in model["per_language"].values())
    # The base encoder reproduces the known headroom: Yoruba well above K'iche'.
    base = metrics["models"]["base"]["per_language"]
    assert base["yor"]["to_eng"] > base["quc"]["to_eng"]
    report = Path(out("evaluate", "report")).read_text()
    assert "| yor |" in report and "base x->eng" in report and "trained x->eng" in report
    assert Path(out("evaluate", "plot")).stat().st_size > 10_000
    assert SentenceTransformer(out("train", "model"), device="cpu").encode(["Ẹ kú àárọ̀"]).shape == (1, 384)

    logs.clear()
    again = run_pipeline(cfg, log=logs.append)
    assert again == manifests and all("up to date" in line for line in logs)

    logs.clear()
    retrained = run_pipeline(cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 1e-5})}), log=logs.append)
    rerun = [line.split("]")[0][1:] for line in logs if "running" in line]
    assert rerun == ["train", "evaluate"]
    assert retrained["synthesize"] == manifests["synthesize"]

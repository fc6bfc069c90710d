"""The run's layout: which encoders a run holds, as `bootembed serve RUN_DIR` and `bootembed eval --model RUN_DIR` see
them (pipeline/layout.py)."""

from __future__ import annotations

import shutil

import pytest

from pipeline import encoder_lora
from pipeline.layout import models_of_run
from tests.conftest import random_encoder_adapter


def test_models_of_run(tmp_path, tiny_encoder):
    empty = tmp_path / "run-without-model"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as caught:
        models_of_run(str(empty))
    message = str(caught.value)
    assert str(empty) in message and "train/models" in message and "modules.json" in message
    assert "bootembed run" in message

    with pytest.raises(FileNotFoundError, match="no such directory"):
        models_of_run(str(tmp_path / "missing"))

    run = tmp_path / "yor-run"
    models = run / "train" / "models"
    models.mkdir(parents=True)
    (models / "icl").symlink_to(tiny_encoder)
    (models / "human_nli").symlink_to(tiny_encoder)
    assert models_of_run(str(run) + "/") == {"yor-run": str(models / "icl")}, "one strategy: named after the run"
    (models / "xllora").symlink_to(tiny_encoder)
    assert models_of_run(str(run)) == {"yor-run-icl": str(models / "icl"), "yor-run-xllora": str(models / "xllora")}
    assert models_of_run(tiny_encoder) == {"st": tiny_encoder}


def test_a_source_written_like_a_hub_id_is_that_model():
    """Not a local path but `org/name`: served under that id (build_app then checks that the hub has it)."""
    assert models_of_run("bootembed-test/absent") == {"bootembed-test/absent": "bootembed-test/absent"}


def test_a_lora_run_is_served_as_its_adapters(tmp_path, tiny_encoder):
    run = tmp_path / "demo"
    lora_dir = run / "train" / "lora"
    shutil.copytree(tiny_encoder, lora_dir / "base")
    for lang in ("yor", "kha"):
        random_encoder_adapter(str(lora_dir / "base"), str(lora_dir / lang), seed=0)
        shutil.copytree(tiny_encoder, run / "train" / "models" / f"lora-{lang}")
    shutil.copytree(tiny_encoder, run / "train" / "models" / "human_nli")
    encoder_lora.write_registry(str(lora_dir), {"base": "base", "adapters": [{"id": "yor", "folder": "yor"},
                                                                              {"id": "kha", "folder": "kha"}]})
    # served (and evaluated, merged into the base in memory) as adapters, never as their merged copies
    assert models_of_run(str(run)) == {"demo/yor": str(lora_dir / "yor"), "demo/kha": str(lora_dir / "kha")}

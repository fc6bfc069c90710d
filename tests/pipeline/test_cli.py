from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.run import STAGE_NAMES

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_every_stage_has_its_command():
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    groups = {g.name for g in app.registered_groups}
    assert (set(STAGE_NAMES) - {"adapters"}) | {"run", "serve", "config"} <= commands and "adapters" in groups
    result = runner.invoke(app, ["adapters", "--help"])
    assert "train" in result.output and "list" in result.output


def test_adapters_list_shows_the_registry_or_says_what_to_run(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.adapter_registry import REGISTRY_SCHEMA, registry_row

    result = runner.invoke(app, ["adapters", "list", str(tmp_path)])
    assert result.exit_code == 2 and "no adapter registry" in result.output and "bootembed adapters train" in result.output
    (tmp_path / "adapters").mkdir()
    rows = [registry_row("xllora-positive", "xllora", "xllora", "positive", None, "base", "xllora-positive", "bundled pairs",
                         {"examples": 240, "steps": 30, "loss_first": 3.25, "loss_last": 1.5, "seconds": 40.0})]
    pq.write_table(pa.Table.from_pylist(rows, schema=REGISTRY_SCHEMA), tmp_path / "adapters" / "registry.parquet")
    result = runner.invoke(app, ["adapters", "list", str(tmp_path)])
    assert result.exit_code == 0, result.output
    line = result.output.splitlines()[1]
    assert line.split()[:6] == ["xllora-positive", "xllora", "positive", "all", "xllora", "30"] and "3.25 -> 1.50" in line


def test_config_prints_every_default_and_applies_overrides():
    result = runner.invoke(app, ["config", str(REPO / "configs" / "demo.yaml"), "--set", "train.epochs=4"])
    assert result.exit_code == 0, result.output
    assert "epochs: 4" in result.output and "temperature: 0.05" in result.output


def test_a_malformed_config_exits_2_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("languages: [yor]\ntrian:\n  epochs: 2\n")
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    assert "trian: unknown key" in result.output


def test_a_stage_without_its_inputs_exits_2_with_what_to_run(tmp_path):
    result = runner.invoke(app, ["evaluate", str(REPO / "configs" / "demo.yaml"), "--set", f"run_dir={tmp_path}"])
    assert result.exit_code == 2
    assert "has not finished" in result.output and "bootembed" in result.output


def test_serve_refuses_a_folder_without_a_model(tmp_path):
    result = runner.invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == 2
    assert "neither a run directory with a trained model" in result.output


def test_serve_names_a_source_that_is_neither_a_folder_nor_a_hub_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["serve", "runs/typo"])  # relative and missing: read as a hub id, which is not there
    assert result.exit_code == 2
    assert "runs/typo" in result.output and "nor a sentence-transformers model on the Hugging Face hub" in result.output


def test_eval_puts_any_models_side_by_side(tmp_path, tiny_encoder, minilm_path):
    out = tmp_path / "report"
    args = ["eval", str(REPO / "configs" / "demo.yaml"), "--set", f"run_dir={tmp_path / 'run'}", "--set", "languages=[yor]",
            "--set", "evaluate.tasks=[]", "--set", "evaluate.bootstrap_samples=20", "--no-base",
            "--model", f"tiny={tiny_encoder}", "--model", f"minilm={minilm_path}", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "| language | tiny x->eng acc@1 | minilm x->eng acc@1 | Δ minilm | n |" in report
    assert "Training data per strategy" not in report, "no run trained these models"

    result = runner.invoke(app, ["eval", str(REPO / "configs" / "demo.yaml"), "--model", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "is not a folder, a bundled:<name> model or a hub id" in result.output


def test_lora_list_and_merge_a_runs_encoder_adapters(tmp_path, tiny_encoder):
    """`bootembed lora list RUN` shows the adapters with their evaluation; `lora merge RUN ID OUT` writes one adapter
    merged into its base: the vectors peft's own merge gives."""
    import json
    import shutil

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from pipeline import encoder_lora
    from tests.conftest import merged_encoder, random_encoder_adapter

    run = tmp_path / "demo"
    result = runner.invoke(app, ["lora", "list", str(run)])
    assert result.exit_code == 2 and "registry.json" in result.output and "train: {lora:" in result.output
    lora_dir = run / "train" / "lora"
    shutil.copytree(tiny_encoder, lora_dir / "base")
    entries = []
    for i, lang in enumerate(("yor", "kha")):
        random_encoder_adapter(str(lora_dir / "base"), str(lora_dir / lang), seed=i)
        entries.append({"id": lang, "folder": lang, "language": lang, "strategy": None, "triplets": 20 + i, "steps": 3})
    encoder_lora.write_registry(str(lora_dir), {"base": "base", "encoder": "tiny", "adapters": entries,
                                                "base_sha256": encoder_lora.encoder_sha256(str(lora_dir / "base"))})
    (run / "train" / "manifest.json").write_text(json.dumps({"fingerprint": "t1"}))
    (run / "evaluate").mkdir()
    (run / "evaluate" / "adapters.json").write_text(json.dumps({"train_fingerprint": "t1", "adapters": {"yor": {
        "scores": {"retrieval": {"x->eng acc@1": 0.5, "n": 20}},
        "vs_base": {"retrieval": {"x->eng acc@1": {"delta": 0.25, "ci": [0.1, 0.4], "p": 0.01}}}}}}))

    result = runner.invoke(app, ["lora", "list", str(run)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[2:]}
    assert rows["yor"].split()[:5] == ["yor", "yor", "(all)", "20", "3"] and "x->eng acc@1 0.500 (+0.250 vs base)" in rows["yor"]
    assert "not evaluated" in rows["kha"]

    result = runner.invoke(app, ["lora", "merge", str(run), "swh", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no adapter 'swh'; it has kha, yor" in result.output
    result = runner.invoke(app, ["lora", "merge", str(run), "kha", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    texts = ["the river is near", "Ẹ kú àárọ̀"]
    expected = SentenceTransformer(merged_encoder(str(lora_dir / "base"), str(lora_dir / "kha"), str(tmp_path / "peft")),
                                   device="cpu").encode(texts)
    assert np.allclose(SentenceTransformer(str(tmp_path / "out"), device="cpu").encode(texts), expected, atol=1e-5)
    result = runner.invoke(app, ["lora", "merge", str(run), "yor", str(tmp_path / "out")])
    assert result.exit_code == 2 and "not empty" in result.output

from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.run import STAGE_NAMES

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_every_stage_has_its_command():
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert set(STAGE_NAMES) | {"run", "serve", "config"} <= commands


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

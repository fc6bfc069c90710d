from pathlib import Path

import pytest

from pipeline.config import ConfigError, RunConfig, apply_overrides, load_config, validate_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("**/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates_and_says_how_to_run_it(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert path.read_text().startswith("#"), "each config starts with a comment giving the command that runs it"


def test_demo_config_is_three_low_resource_languages():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.languages == ["yor", "kha", "quc"]
    assert cfg.generator.engine == "hf"


def test_overrides_keep_yaml_types():
    data = apply_overrides({"train": {"epochs": 1}}, ["train.epochs=3", "train.lr=1e-4", "seeds.udhr=false", "seeds.files=[a.txt]", "languages=[yor, kha]"])
    assert data["train"]["epochs"] == 3 and data["seeds"] == {"udhr": False, "files": ["a.txt"]} and data["languages"] == ["yor", "kha"]
    cfg = validate_config(data)
    assert cfg.train.lr == 1e-4 and cfg.train.epochs == 3


def test_all_problems_reported_at_once_with_their_paths(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("languages: [yor]\ntrain:\n  batchsize: 3\n  epochs: 0\ngenerator:\n  engine: magic\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = str(err.value)
    assert "3 problem(s)" in text
    assert "train.batchsize: unknown key" in text
    assert "train.epochs: Input should be greater than or equal to 1 (got 0)" in text
    assert "generator.engine" in text and "'magic'" in text


def test_unknown_and_duplicate_language_codes_are_named():
    with pytest.raises(ConfigError) as err:
        validate_config({"languages": ["yor", "xx1", "yor"]})
    assert "languages[1] = 'xx1' is not an ISO 639-3 code" in str(err.value)
    assert "['yor'] more than once" in str(err.value)


def test_cross_field_rule_names_both_fields():
    with pytest.raises(ConfigError, match=r"train.batch_size \(30\) must be a multiple of train.num_workers \(4\)"):
        validate_config({"languages": ["yor"], "train": {"batch_size": 30, "num_workers": 4}})


def test_malformed_yaml_and_bad_override_are_clear(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("languages: [yor\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(REPO / "configs" / "demo.yaml", ["train.epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_section_hash_changes_only_with_its_sections():
    a = validate_config({"languages": ["yor"]})
    b = validate_config({"languages": ["yor"], "train": {"epochs": 2}})
    assert a.section_hash("seeds", "languages") == b.section_hash("seeds", "languages")
    assert a.section_hash("train") != b.section_hash("train")


def test_strategy_rules_name_the_fields_they_combine():
    base = {"languages": ["yor"]}
    with pytest.raises(ConfigError, match=r"train adapters on English outputs; they need synthesis.output_language: eng"):
        validate_config({**base, "synthesis": {"strategies": ["xllora"], "output_language": "same"}})
    with pytest.raises(ConfigError, match=r"generator.engine is 'openai' but generator.api_base is empty"):
        validate_config({**base, "generator": {"engine": "openai"}})
    with pytest.raises(ConfigError, match=r"openai engine cannot load"):
        validate_config({**base, "generator": {"engine": "openai", "api_base": "http://x/v1"},
                         "synthesis": {"strategies": ["icl", "composition"]}})
    with pytest.raises(ConfigError, match=r"synthesis.strategies.0: Input should be 'icl', 'composition' or 'xllora'"):
        validate_config({**base, "synthesis": {"strategies": ["lora"]}})
    with pytest.raises(ConfigError, match=r"lists a strategy twice"):
        validate_config({**base, "synthesis": {"strategies": ["icl", "icl"]}})

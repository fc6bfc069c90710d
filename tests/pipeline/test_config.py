from pathlib import Path

import pytest

from pipeline.config import ConfigError, RunConfig, apply_overrides, load_config, validate_config

REPO = Path(__file__).resolve().parents[2]


RUN_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name != "serve.yaml")  # serve.yaml is Ray Serve's format


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates_and_says_how_to_run_it(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert path.read_text().startswith("#"), "each config starts with a comment giving the command that runs it"


def test_demo_config_is_three_low_resource_languages():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.languages == ["yor", "kha", "quc"]
    assert cfg.generator.engine == "hf"


def test_paper_config_is_the_papers_setup():
    cfg = load_config(REPO / "configs" / "paper.yaml")
    assert cfg.languages == ["afr", "hau", "hin", "ind", "kor", "mar", "tel"]
    assert (cfg.generator.engine, cfg.adapters.rank, cfg.adapters.target_modules) == ("vllm", 8, "all-linear")
    t = cfg.train
    assert (t.batch_size, t.lr, t.max_length, t.epochs, t.temperature, t.pooling) == (512, 5e-5, 32, 3, 0.05, "avg_first_last")
    assert set(cfg.synthesis.strategies) == {"icl", "composition", "xllora", "parallel"}  # + the human upper bound


def test_a_language_list_file_is_read_relative_to_the_config(tmp_path):
    (tmp_path / "langs").mkdir()
    (tmp_path / "langs" / "mine.yaml").write_text("# mine\n- yor  # Yoruba\n- kha\n")
    (tmp_path / "run.yaml").write_text("languages: langs/mine.yaml\n")
    assert load_config(tmp_path / "run.yaml").languages == ["yor", "kha"]
    udhr = load_config(REPO / "configs" / "demo.yaml", ["languages=languages/udhr.yaml"]).languages
    assert len(udhr) == 428 and {"yor", "kha", "quc", "afr"} <= set(udhr)


def test_a_bad_language_list_names_each_bad_line(tmp_path):
    (tmp_path / "langs.yaml").write_text("- yor\n- yo\n- xx1\n- yor\n")
    (tmp_path / "run.yaml").write_text("languages: langs.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "run.yaml")
    message = str(err.value)
    assert "langs.yaml, line 2: 'yo' is not an ISO 639-3 code; write 'yor' (Yoruba)" in message
    assert "line 3: 'xx1' is not an ISO 639-3 code" in message
    assert "line 4: 'yor' is listed twice (first on line 1)" in message
    (tmp_path / "run.yaml").write_text("languages: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"language list .*missing.yaml does not exist"):
        load_config(tmp_path / "run.yaml")
    (tmp_path / "langs.yaml").write_text("yor: Yoruba\n")
    (tmp_path / "run.yaml").write_text("languages: langs.yaml\n")
    with pytest.raises(ConfigError, match=r"expected a non-empty YAML list"):
        load_config(tmp_path / "run.yaml")


def test_a_bcp47_tag_in_the_config_gets_its_iso639_3_code_suggested():
    with pytest.raises(ConfigError, match=r"languages\[0\] = 'sw-KE' is not an ISO 639-3 code; write 'swa' \(Swahili"):
        validate_config({"languages": ["sw-KE"]})


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


def test_defaults_that_follow_other_fields_are_the_schemas_and_stay_out_of_the_hashes():
    """Empty torch_threads / max_cpu_loras are filled in by the schema (workers apply no default of their own), as
    properties: they are not dumped, so adding them changed no stage fingerprint."""
    from pipeline.config import GeneratorConfig, TrainConfig

    assert GeneratorConfig(max_loras=16).cpu_loras == 64 and GeneratorConfig(max_cpu_loras=5).cpu_loras == 5
    assert GeneratorConfig(cpus_per_actor=1.5).actor_threads == 2 and GeneratorConfig(torch_threads=3).actor_threads == 3
    assert TrainConfig(cpus_per_worker=0.5).worker_threads == 1 and TrainConfig(torch_threads=2).worker_threads == 2
    dump = RunConfig(languages=["yor"]).model_dump()
    assert not (set(dump["generator"]) | set(dump["train"])) & {"cpu_loras", "actor_threads", "worker_threads"}


def test_strategy_rules_name_the_fields_they_combine():
    base = {"languages": ["yor"]}
    with pytest.raises(ConfigError, match=r"train adapters on English outputs; they need synthesis.output_language: eng"):
        validate_config({**base, "synthesis": {"strategies": ["xllora"], "output_language": "same"}})
    with pytest.raises(ConfigError, match=r"generator.engine is 'openai' but generator.api_base is empty"):
        validate_config({**base, "generator": {"engine": "openai"}})
    with pytest.raises(ConfigError, match=r"openai engine cannot load"):
        validate_config({**base, "generator": {"engine": "openai", "api_base": "http://x/v1"},
                         "synthesis": {"strategies": ["icl", "composition"]}})
    with pytest.raises(ConfigError, match=r"synthesis.strategies.0: Input should be 'icl', 'composition', 'xllora' or 'parallel'"):
        validate_config({**base, "synthesis": {"strategies": ["lora"]}})
    with pytest.raises(ConfigError, match=r"lists a strategy twice"):
        validate_config({**base, "synthesis": {"strategies": ["icl", "icl"]}})
    with pytest.raises(ConfigError, match=r"'parallel', whose positives are English reference translations; it needs "
                                          r"synthesis.output_language: eng"):
        validate_config({**base, "synthesis": {"strategies": ["parallel"], "output_language": "same"}})
    with pytest.raises(ConfigError, match=r"seeds.files\[0\]: expected a file, or two line-aligned files"):
        validate_config({**base, "seeds": {"files": [["a.txt", "b.txt", "c.txt"]]}})
    with pytest.raises(ConfigError, match=r"train.max_length"):
        validate_config({**base, "train": {"max_length": "longest"}})
    assert validate_config({**base, "synthesis": {"strategies": ["parallel"]}, "train": {"max_length": "auto"}})

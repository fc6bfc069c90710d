import pytest

from pipeline.evaluation.tasks import PRIMARY_METRIC, TASK_DESCRIPTIONS, TASK_METRICS, TASK_TITLES, active_tasks, prepare_tasks


def test_every_task_has_a_title_a_description_and_its_primary_metric_among_its_metrics():
    assert set(TASK_METRICS) == set(TASK_TITLES) == set(TASK_DESCRIPTIONS) == set(PRIMARY_METRIC)
    assert all(PRIMARY_METRIC[t] in TASK_METRICS[t] for t in TASK_METRICS)


def test_a_task_on_user_files_runs_whenever_its_files_are_given(make_config, tmp_path):
    cfg = make_config(languages=["yor"], evaluate={"tasks": ["bli"], "sts": {"yor": str(tmp_path / "sts.tsv")}})
    assert active_tasks(cfg) == ["bli", "sts"]
    data, skipped = prepare_tasks(cfg, ["yor", "kha"])
    assert skipped["sts"]["yor"].startswith("STS file") and skipped["sts"]["kha"].startswith("no STS file for kha")
    assert data["bli"]["yor"][3] == "CLDR emoji short names" and "kha" in data["bli"]


def test_malformed_user_files_stop_the_evaluation_before_any_model_and_bad_config_is_refused(make_config, tmp_path):
    from pipeline.config import ConfigError

    (tmp_path / "yor.txt").write_text("a\nb\nc\n")
    (tmp_path / "eng.txt").write_text("A\nB\n")
    cfg = make_config(languages=["yor"], evaluate={"parallel": {"yor": [str(tmp_path / "yor.txt"), str(tmp_path / "eng.txt")]}})
    with pytest.raises(ValueError, match=r"yor.txt has 3 lines, .*eng.txt has 2"):
        prepare_tasks(cfg, ["yor"])
    with pytest.raises(ConfigError) as err:
        make_config(evaluate={"parallel": {"yor": ["a.txt", "b.txt", "c.txt"], "kha": "kha.txt"},
                              "query_docs": {"yor": "qd.txt"}})
    message = str(err.value)
    assert "evaluate.parallel: yor: expected one .csv / .tsv / .jsonl / .parquet file with columns yor and eng, or two " \
           "line-aligned text files [yor.txt, eng.txt]; got 3 file(s); kha: expected" in message
    assert "got 'kha.txt'" in message and "evaluate.query_docs: yor: 'qd.txt' is not a .csv / .tsv / .jsonl / .parquet file" in message

from pipeline.evaluation.report import report_markdown


def test_report_puts_models_side_by_side_with_deltas_and_best_marked(metrics):
    text = report_markdown(metrics, {"filter counts": {"kept": 10}, "examples": [
        {"lang": "yor", "anchor": "a|b", "positive": "p", "negative": "n"}]})
    assert "| yor | 0.300 | **0.400** | +0.100 | 23 |" in text
    assert "| kha | **0.100** | 0.050 | -0.050 | 23 |" in text
    assert "| average | 0.200 | **0.225** | +0.025 | 46 |" in text
    assert "| yor | a\\|b | p | n |" in text
    assert "filter counts: {'kept': 10}" in text


def test_report_has_one_table_per_task_metric_with_intervals_skips_and_description(task_metrics):
    text = report_markdown(task_metrics, {})
    assert "## Bilingual lexicon induction" in text and "test description" in text
    assert "| language | base P@1 | trained P@1 | Δ trained | n | source |" in text
    assert "| yor | 0.200 [0.10, 0.30] | **0.300** [0.20, 0.40] | +0.100 [-0.10, +0.30] | 50 | CLDR |" in text
    assert "| kha | skipped: no dictionary for kha |" in text
    assert "| average (1 languages) | 0.200 [0.10, 0.30] | **0.300** [0.20, 0.40] | +0.100 [-0.05, +0.25] | 50 |" in text
    assert "### P@5" in text and "nan" not in text.lower()
    task_metrics["tasks"]["bli"]["delta_ci"]["trained"]["P@1"] = [0.02, 0.2]
    assert "| +0.100 [+0.02, +0.20] * | 50 |" in report_markdown(task_metrics, {})
    assert "base x->eng" in text  # legacy retrieval tables still there without a retrieval task

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


def lora_pairing() -> dict:
    """metrics["lora_vs_full"] by hand: the parallel strategy's adapters of yor and kha beside its full fine-tune on
    retrieval (both directions) and BLI; icl not compared."""
    def scores(to, frm, n, **extra):
        return {"x->eng acc@1": to, "eng->x acc@1": frm, "x->eng MRR@10": to + 0.1, "n": n, "ci": {}, **extra}

    def lora(to, frm, n, ci_to, ci_from, p_to, p_from, **extra):
        return scores(to, frm, n, delta_ci={"x->eng acc@1": ci_to, "eng->x acc@1": ci_from},
                      delta_p={"x->eng acc@1": p_to, "eng->x acc@1": p_from}, **extra)

    retrieval = {
        "metrics": ["x->eng acc@1", "eng->x acc@1", "x->eng MRR@10"], "primary": "x->eng acc@1",
        "per_language": {"yor": {"full": scores(0.739, 0.7, 23), "lora": lora(0.696, 0.7, 23, [-0.13, 0.04], [-0.09, 0.09], 0.41, 1.0)},
                         "kha": {"full": scores(0.304, 0.2, 23), "lora": lora(0.217, 0.25, 23, [-0.17, -0.02], [-0.04, 0.13], 0.04, 0.5)}},
        "average": {"full": scores(0.52, 0.45, 46, languages=2), "lora": scores(0.46, 0.475, 46, languages=2)},
        "delta_ci": {"lora": {"x->eng acc@1": [-0.12, -0.01], "eng->x acc@1": [-0.04, 0.09]}},
        "delta_p": {"lora": {"x->eng acc@1": 0.03, "eng->x acc@1": 0.6}}}
    bli = {"metrics": ["P@1", "P@5"], "primary": "P@1",
           "per_language": {"yor": {"full": {"P@1": 0.2, "P@5": 0.4, "n": 200}, "lora": {"P@1": 0.21, "P@5": 0.4, "n": 200}}},
           "average": {"full": {"P@1": 0.2, "P@5": 0.4, "n": 200, "languages": 1},
                       "lora": {"P@1": 0.21, "P@5": 0.4, "n": 200, "languages": 1}},
           "delta_ci": {"lora": {"P@1": [-0.02, 0.04]}}, "delta_p": {"lora": {"P@1": 0.5}}}
    return {"confidence": 0.95, "bootstrap_samples": 1000, "skipped": {"icl": "no full fine-tune of this strategy"},
            "strategies": {"parallel": {
                "full": "parallel", "full_bytes": 470_640_000, "same_data": True,
                "adapters": {"yor": {"model": "lora-yor-parallel", "adapter": "yor-parallel", "triplets": 27, "bytes": 2_690_000},
                             "kha": {"model": "lora-kha-parallel", "adapter": "kha-parallel", "triplets": 25, "bytes": 2_690_000}},
                "tasks": {"retrieval": retrieval, "bli": bli}}}}


def test_lora_section_pairs_each_language_with_the_full_fine_tune_and_gives_sizes(task_metrics):
    task_metrics["lora_vs_full"] = lora_pairing()
    text = report_markdown(task_metrics, {})
    assert "## LoRA adapters beside the full fine-tune" in text
    assert ("- `parallel`: LoRA 0.460 vs full fine-tune 0.520 (Bitext retrieval, x->eng acc@1, 2 language(s), 46 items): "
            "Δ -0.060 [-0.12, -0.01] *, p = .030: LoRA measurably below the full fine-tune.") in text
    assert "- `icl`: not compared: no full fine-tune of this strategy." in text
    assert "| yor-parallel | yor | parallel | 27 | 2.69 | 470.6 | 0.6% |" in text
    assert ("| language | adapter | full x->eng acc@1 | LoRA x->eng acc@1 | Δ x->eng acc@1 | full eng->x acc@1 | "
            "LoRA eng->x acc@1 | Δ eng->x acc@1 | n |") in text
    assert "| yor | yor-parallel | 0.739 | 0.696 | -0.043 [-0.13, +0.04] p = .410 | 0.700 | 0.700 | +0.000 [-0.09, +0.09] p = 1.000 | 23 |" in text
    assert "| kha | kha-parallel | 0.304 | 0.217 | -0.087 [-0.17, -0.02] * p = .040 | 0.200 | 0.250 | +0.050 [-0.04, +0.13] p = .500 | 23 |" in text
    assert ("| average (2 languages) |  | 0.520 | 0.460 | -0.060 [-0.12, -0.01] * p = .030 | 0.450 | 0.475 | "
            "+0.025 [-0.04, +0.09] p = .600 | 46 |") in text
    assert "| parallel | Bilingual lexicon induction | P@1 | 0.200 | 0.210 | +0.010 [-0.02, +0.04] p = .500 | 1 | 200 |" in text
    assert "MRR" not in text.split("## LoRA adapters")[1]  # the primary metric and its reverse only
    assert "mixes data and method" not in text
    assert text.index("## Bilingual lexicon induction") < text.index("## LoRA adapters")  # after the task tables

    task_metrics["lora_vs_full"]["strategies"]["parallel"]["same_data"] = False  # train.lora.per: language
    task_metrics["lora_vs_full"]["strategies"]["parallel"]["tasks"]["retrieval"]["delta_ci"]["lora"]["x->eng acc@1"] = [-0.12, 0.01]
    text = report_markdown(task_metrics, {})
    assert "Δ -0.060 [-0.12, +0.01], p = .030: no measurable difference." in text
    assert "full fine-tune of `parallel` only that strategy's: the difference mixes data and method" in text


def test_a_report_without_lora_has_no_lora_section(task_metrics):
    text = report_markdown(task_metrics, {})
    assert "LoRA" not in text and report_markdown({**task_metrics, "lora_vs_full": None}, {}) == text

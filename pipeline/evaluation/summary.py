"""Per-item scores -> a task's result: per-language and average scores with bootstrap intervals, paired tests against
the first model, the smallest detectable difference and the share of the upper bound's gain each model closes.

A task result is `{"per_language": {lang: {model: scores} | {"skipped": reason}}, "average": {model: scores}, ...}`;
per-item score vectors stay out of it (never in JSON).
"""

from __future__ import annotations

import numpy as np

from pipeline import _stats
from pipeline._verdict import UPPER_BOUND
from pipeline.config import RunConfig
from pipeline.evaluation.tasks import PRIMARY_METRIC, TASK_DESCRIPTIONS, TASK_METRICS, active_tasks


def summarise_tasks(cfg: RunConfig, items: dict[str, dict], model_skipped: dict[str, dict], task_data: dict,
                    task_skipped: dict, skipped_langs: dict) -> dict:
    """metrics["tasks"]: every task with per-language scores, averages and bootstrap intervals.

    items: model -> task -> lang -> per-item scores; model_skipped: model -> task -> lang -> why that model could not
    score it; task_data, task_skipped: `tasks.prepare_tasks`; skipped_langs: languages without held-out UDHR text.
    """
    models = list(items)
    ev = cfg.evaluate
    out = {}
    for task in ["retrieval", *active_tasks(cfg)]:
        skipped = {**(skipped_langs if task == "retrieval" else {}), **task_skipped.get(task, {})}
        for m in models:
            skipped.update(model_skipped[m].get(task, {}))
        primary_key = TASK_METRICS[task][PRIMARY_METRIC[task]]
        for lang in cfg.languages:  # an empty item set would put NaN into the average
            if lang not in skipped and not primary_key.startswith("=") and any(
                    len(items[m].get(task, {}).get(lang, {}).get(primary_key, [1])) == 0 for m in models):
                skipped[lang] = "no items to evaluate (no held-out unit aligned with English)" if task == "retrieval" \
                    else "no items to evaluate"
        langs = [lang for lang in cfg.languages if lang not in skipped and all(lang in items[m].get(task, {}) for m in models)]
        per_item = {lang: {m: items[m][task][lang] for m in models} for lang in langs}
        extra = {lang: {"source": d[3]} for lang, d in task_data.get("bli", {}).items()} if task == "bli" else None
        out[task] = {"description": TASK_DESCRIPTIONS[task],
                     **summarise(per_item, skipped, TASK_METRICS[task], PRIMARY_METRIC[task], models,
                                 ev.bootstrap_samples, ev.confidence, cfg.seed, extra, reference=UPPER_BOUND)}
    return out


def summarise(per_item: dict[str, dict[str, dict]], skipped: dict[str, str], metrics: dict[str, str], primary: str,
              models: list[str], samples: int, level: float = 0.95, seed: int = 0, extra: dict | None = None,
              reference: str | None = None) -> dict:
    """Task result from per-item vectors.

    per_item: lang -> model -> {metric: per-item array (a mean metric) or float (a corpus metric)}.
    metrics: metric -> vector key in per_item (a mean over items) or `=key` (a float, e.g. macro-F1).
    Every mean metric gets bootstrap intervals per language and on the average (the mean of the
    per-language means, items resampled within each language), and a paired interval of each
    model's difference to the first model, with a paired permutation p value (`delta_p`), the smallest difference
    the items can detect (`detectable`), and, when `reference` names one of the models (the parallel strategy, the
    upper bound), the share of its gain each other trained model closes (`gap_closed`). `primary` names the metric
    plots and "n" follow.
    """
    langs = list(per_item)
    vectors = {name: key for name, key in metrics.items() if not key.startswith("=")}
    out: dict = {"metrics": list(metrics), "primary": primary, "per_language": {}, "average": {}, "delta_ci": {},
                 "delta_p": {}, "detectable": {}, "gap_closed": {}, "gap_reference": reference if reference in models else None,
                 "confidence": level, "bootstrap_samples": samples}
    for lang in langs:
        out["per_language"][lang] = {}
        for m in models:
            item = per_item[lang][m]
            scores = {name: float(item[key[1:]]) if key.startswith("=") else float(np.mean(item[key]))
                      for name, key in metrics.items()}
            scores["n"] = int(item["n"]) if "n" in item else int(len(item[metrics[primary]]))
            scores["ci"] = {name: _stats.bootstrap_mean_ci([item[key]], samples, level, seed) for name, key in vectors.items()}
            if m != models[0]:
                scores["delta_ci"] = {name: _stats.bootstrap_delta_ci([item[key]], [per_item[lang][models[0]][key]], samples, level, seed)
                                      for name, key in vectors.items()}
                scores["delta_p"] = {name: _stats.paired_permutation_p([item[key]], [per_item[lang][models[0]][key]], samples, seed)
                                     for name, key in vectors.items()}
            out["per_language"][lang][m] = scores | (extra or {}).get(lang, {})
    for lang, reason in skipped.items():
        out["per_language"][lang] = {"skipped": reason}
    if langs:
        for m in models:
            avg = {name: float(np.mean([out["per_language"][l][m][name] for l in langs])) for name in metrics}
            avg["n"] = int(sum(out["per_language"][l][m]["n"] for l in langs))
            avg["languages"] = len(langs)
            avg["ci"] = {name: _stats.bootstrap_mean_ci([per_item[l][m][key] for l in langs], samples, level, seed)
                         for name, key in vectors.items()}
            out["average"][m] = avg
        column = lambda m, key: [per_item[l][m][key] for l in langs]  # noqa: E731 - one vector per language
        for m in models[1:]:
            out["delta_ci"][m] = {name: _stats.bootstrap_delta_ci(column(m, key), column(models[0], key), samples, level, seed)
                                  for name, key in vectors.items()}
            out["delta_p"][m] = {name: _stats.paired_permutation_p(column(m, key), column(models[0], key), samples, seed)
                                 for name, key in vectors.items()}
        out["detectable"] = {name: _stats.detectable_difference(
            [_stats.standard_error(column(m, key), column(models[0], key)) for m in models[1:]], column(models[0], key), level)
            for name, key in vectors.items()}
        if out["gap_reference"]:
            for m in models[1:]:
                if m != reference:
                    out["gap_closed"][m] = {name: _stats.bootstrap_ratio(column(m, key), column(reference, key),
                                                                         column(models[0], key), samples, level, seed)
                                            for name, key in vectors.items()}
    return out

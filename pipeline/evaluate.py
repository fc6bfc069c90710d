"""Stage `evaluate`: the base encoder, the non-synthetic baseline and one encoder per strategy, side by side, on held-out text.

Tasks:
- bitext retrieval (always): accuracy@1 and MRR@10 between each target language and English
  over the held-out UDHR units. Queries are held-out units only; the candidate pool is every
  unit of the other language (held-out or not), so the task is not trivially small.
- bilingual lexicon induction (`bli`): P@1 / P@5 of the nearest English word (cosine of word
  embeddings) among every English word of the language's dictionary (bundled FreeDict subsets,
  user dictd / TSV files, or one-word CLDR emoji names).
- topic classification (`classification`): a logistic-regression probe on frozen embeddings of
  CLDR emoji short names, trained on English, tested on the target language (zero-shot
  transfer), accuracy and macro-F1 over the 8 emoji groups.
Averages carry stratified bootstrap confidence intervals and differences to the base a paired
interval. Writes metrics.json (legacy retrieval under "models", every task under "tasks"),
report.md, retrieval.png and tasks.png.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pyarrow.parquet as pq

from pipeline import _eval_tasks as tasks
from pipeline.config import RunConfig
from pipeline.manifest import StageOutput, join, read_json
from pipeline.seeds import PIVOT

REQUIRED_COLUMNS = {"lang", "unit", "text", "held_out"}


# ---------------------------------------------------------------- metrics (pure numpy)

def retrieval_accuracy(queries: np.ndarray, query_ids: list, candidates: np.ndarray, candidate_ids: list) -> float:
    """Share of queries whose most similar candidate (cosine) carries the same id."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)  # [nq, d]
    c = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)  # [nc, d]
    best = (q @ c.T).argmax(axis=1)  # [nq]
    return float(np.mean([query_ids[i] == candidate_ids[j] for i, j in enumerate(best)]))


def bitext_items(rows: list[dict], embeddings: np.ndarray, lang: str) -> dict:
    """Per-query vectors (hit@1, reciprocal rank within 10) both directions, plus pool sizes."""
    idx = {(r["lang"], r["unit"]): i for i, r in enumerate(rows)}
    held = sorted(r["unit"] for r in rows if r["lang"] == lang and r["held_out"] and (PIVOT, r["unit"]) in idx)
    src_all = sorted(r["unit"] for r in rows if r["lang"] == lang)
    eng_all = sorted(r["unit"] for r in rows if r["lang"] == PIVOT)
    emb = lambda l, units: embeddings[[idx[(l, u)] for u in units]]  # noqa: E731
    to_eng = tasks.rank_scores(emb(lang, held), held, emb(PIVOT, eng_all), eng_all)
    from_eng = tasks.rank_scores(emb(PIVOT, held), held, emb(lang, src_all), src_all)
    return {"hit1_to": to_eng["hit1"], "rr_to": to_eng["rr"], "hit1_from": from_eng["hit1"], "rr_from": from_eng["rr"],
            "candidates_eng": len(eng_all), "candidates_lang": len(src_all)}


def bitext_scores(rows: list[dict], embeddings: np.ndarray, lang: str) -> dict:
    """acc@1 and MRR@10 lang->eng and eng->lang; queries are held-out units, candidates every unit."""
    items = bitext_items(rows, embeddings, lang)
    mean = lambda v: float(np.mean(v)) if len(v) else 0.0  # noqa: E731
    return {
        "to_eng": mean(items["hit1_to"]),
        "from_eng": mean(items["hit1_from"]),
        "mrr10_to_eng": mean(items["rr_to"]),
        "mrr10_from_eng": mean(items["rr_from"]),
        "queries": len(items["hit1_to"]),
        "candidates_eng": items["candidates_eng"],
        "candidates_lang": items["candidates_lang"],
    }


RETRIEVAL_METRICS = {"x->eng acc@1": "hit1_to", "eng->x acc@1": "hit1_from", "x->eng MRR@10": "rr_to", "eng->x MRR@10": "rr_from"}
BLI_METRICS = {"P@1": "hit1", "P@5": "hit5"}
CLASSIFICATION_METRICS = {"accuracy": "correct", "macro-F1": "=macro_f1"}
STS_METRICS = {"Spearman": "=spearman", "Pearson": "=pearson"}
TASK_DESCRIPTIONS = {
    "retrieval": "Bitext retrieval on held-out UDHR paragraphs: a query paragraph retrieves its translation among every "
                 "paragraph of the other language (cosine). `x->eng` retrieves the English translation of a "
                 "target-language paragraph, `eng->x` the reverse; acc@1 = right one first, MRR@10 = mean reciprocal "
                 "rank of the right one (0 beyond rank 10). n = queries.",
    "bli": "Bilingual lexicon induction: each target-language word of a dictionary retrieves its nearest English word "
           "(cosine of word embeddings) among every English word of that dictionary; P@k = a dictionary translation "
           "is among the k nearest. n = query words; the source column names the dictionary.",
    "classification": "Topic classification, zero-shot transfer: a logistic-regression probe on frozen embeddings is "
                      "trained on English CLDR emoji short names labelled by emoji group (8 topics: smileys, people, "
                      "animals & nature, food, travel & places, activities, objects, symbols) and tested on the "
                      "target-language short names. n = test texts.",
    "sts": "Semantic textual similarity (the paper's measure, as in SemRel 2024 / MTEB STS): Spearman and Pearson "
           "correlation between the cosine similarity of each scored sentence pair and its gold score (your files in "
           "evaluate.sts). n = pairs; a correlation has no per-item bootstrap interval.",
}
TASK_TITLES = {"retrieval": "Bitext retrieval", "bli": "Bilingual lexicon induction", "classification": "Topic classification",
               "sts": "Semantic textual similarity"}


def active_tasks(cfg: RunConfig) -> list[str]:
    """The configured tasks beside retrieval; STS also runs whenever STS files are given."""
    return [*cfg.evaluate.tasks, *(["sts"] if cfg.evaluate.sts and "sts" not in cfg.evaluate.tasks else [])]


def prepare_tasks(cfg: RunConfig, langs: list[str]) -> tuple[dict, dict]:
    """Model-independent task data: (task -> lang -> data, task -> lang -> skipped reason)."""
    data: dict[str, dict] = {t: {} for t in active_tasks(cfg)}
    skipped: dict[str, dict] = {t: {} for t in active_tasks(cfg)}
    for lang in langs:
        if "sts" in data:
            try:
                if lang not in cfg.evaluate.sts:
                    raise tasks.Skipped(f"no STS file for {lang} (evaluate.sts: {{{lang}: pairs.tsv}})")
                data["sts"][lang] = tasks.read_sts(cfg.evaluate.sts[lang])
            except tasks.Skipped as e:
                skipped["sts"][lang] = str(e)
        if "bli" in data:
            try:
                pairs, source = tasks.load_dictionary(lang, cfg.evaluate.dictionaries, cfg.evaluate.bli_cldr_fallback)
                data["bli"][lang] = (*tasks.bli_items(pairs, cfg.evaluate.bli_max_words, cfg.seed), source)
            except tasks.Skipped as e:
                skipped["bli"][lang] = str(e)
        if "classification" in data:
            try:
                items = tasks.classification_items(lang, cfg.evaluate.classification_source, cfg.evaluate.classification_max_test,
                                                   cfg.seed, cfg.evaluate.classification_max_train)
                if len(set(items[1])) < 2:
                    raise tasks.Skipped(f"label set has one class ({items[1][0]}): nothing to classify")
                data["classification"][lang] = items
            except tasks.Skipped as e:
                skipped["classification"][lang] = str(e)
    return data, skipped


def evaluate_model(path: str, rows: list[dict], langs: list[str], cfg: RunConfig, task_data: dict | None = None) -> dict:
    """Legacy retrieval scores {"per_language", "average"}, plus "_items": task -> lang -> per-item vectors."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")
    cache: dict[str, np.ndarray] = {}

    def encode(texts: list[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in cache})
        if todo:
            vecs = model.encode(todo, prompt=cfg.train.prefix, batch_size=cfg.evaluate.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
            cache.update(zip(todo, vecs))
        return np.stack([cache[t] for t in texts]) if texts else np.zeros((0, 1))

    texts = [r["text"] for r in rows]
    emb = model.encode(texts, prompt=cfg.train.prefix, batch_size=cfg.evaluate.batch_size, normalize_embeddings=True,
                       convert_to_numpy=True, show_progress_bar=False)
    items: dict[str, dict] = {"retrieval": {lang: bitext_items(rows, emb, lang) for lang in langs}}
    per_lang = {lang: bitext_scores(rows, emb, lang) for lang in langs}
    keys = ("to_eng", "from_eng", "mrr10_to_eng", "mrr10_from_eng")
    average = {k: float(np.mean([m[k] for m in per_lang.values()])) for k in keys}
    average["queries"] = sum(m["queries"] for m in per_lang.values())
    skipped: dict[str, dict] = {}
    probes: dict[tuple, object] = {}  # one probe per training set (the same English texts for every language)

    def classify(d: tuple) -> dict:
        key = (tuple(d[0]), tuple(d[1]))
        if key not in probes:
            probes[key] = tasks.fit_probe(encode(d[0]), d[1], cfg.seed)
        return tasks.probe_scores(None, d[1], encode(d[2]), d[3], clf=probes[key])

    for task, fn in (("bli", lambda d: tasks.bli_scores(encode(d[0]), encode(d[1]), d[1], d[2])),
                     ("classification", classify),
                     ("sts", lambda d: tasks.sts_scores(encode(d[0]), encode(d[1]), d[2]))):
        for lang, d in (task_data or {}).get(task, {}).items():
            try:
                items.setdefault(task, {})[lang] = fn(d)
            except tasks.Skipped as e:
                skipped.setdefault(task, {})[lang] = str(e)
    return {"per_language": per_lang, "average": average, "_items": items, "_skipped": skipped}


def summarise_tasks(cfg: RunConfig, results: dict, task_data: dict, task_skipped: dict, skipped_langs: dict) -> dict:
    """metrics["tasks"]: every task with per-language scores, averages and bootstrap intervals."""
    models = list(results)
    ev = cfg.evaluate
    specs = {"retrieval": RETRIEVAL_METRICS, "bli": BLI_METRICS, "classification": CLASSIFICATION_METRICS, "sts": STS_METRICS}
    primaries = {"retrieval": "x->eng acc@1", "bli": "P@1", "classification": "accuracy", "sts": "Spearman"}
    out = {}
    for task in ["retrieval", *active_tasks(cfg)]:
        skipped = {**(skipped_langs if task == "retrieval" else {}), **task_skipped.get(task, {})}
        for m in models:
            skipped.update(results[m]["_skipped"].get(task, {}))
        primary_key = specs[task][primaries[task]]
        for lang in cfg.languages:  # an empty item set would put NaN into the average
            if lang not in skipped and not primary_key.startswith("=") and any(
                    len(results[m]["_items"].get(task, {}).get(lang, {}).get(primary_key, [1])) == 0 for m in models):
                skipped[lang] = "no items to evaluate (no held-out unit aligned with English)" if task == "retrieval" \
                    else "no items to evaluate"
        langs = [lang for lang in cfg.languages if lang not in skipped
                 and all(lang in results[m]["_items"].get(task, {}) for m in models)]
        per_item = {lang: {m: results[m]["_items"][task][lang] for m in models} for lang in langs}
        extra = {lang: {"source": d[3]} for lang, d in task_data.get("bli", {}).items()} if task == "bli" else None
        out[task] = {"description": TASK_DESCRIPTIONS[task],
                     **tasks.summarise(per_item, skipped, specs[task], primaries[task], models, ev.bootstrap_samples,
                                       ev.confidence, cfg.seed, extra)}
    return out


# ---------------------------------------------------------------- report

def legacy_retrieval_tables(metrics: dict) -> list[str]:
    """acc@1 tables from metrics["models"] (metrics.json written before the task suite)."""
    models = list(metrics["models"])
    lines: list[str] = []
    lines += ["## Bitext retrieval accuracy@1 (held-out UDHR paragraphs)", "",
              "Queries: held-out paragraphs; candidates: every paragraph of the other language. "
              "`x->eng` retrieves the English translation of a target-language paragraph, `eng->x` the reverse.", ""]
    for direction, label in (("to_eng", "x->eng"), ("from_eng", "eng->x")):
        head = ["language", *[f"{m} {label}" for m in models], *[f"Δ {m}" for m in models[1:]], "queries"]
        lines += [f"### {label}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for lang in [*metrics["languages"], "average"]:
            vals = [metrics["models"][m]["average" if lang == "average" else "per_language"] for m in models]
            vals = [v[direction] if lang == "average" else v[lang][direction] for v in vals]
            best = max(vals)
            cells = [f"**{v:.3f}**" if v == best and vals.count(best) == 1 else f"{v:.3f}" for v in vals]
            deltas = [f"{v - vals[0]:+.3f}" for v in vals[1:]]
            n = sum(metrics["models"][models[0]]["per_language"][x]["queries"] for x in metrics["languages"]) if lang == "average" \
                else metrics["models"][models[0]]["per_language"][lang]["queries"]
            lines.append("| " + " | ".join([lang, *cells, *deltas, str(n)]) + " |")
        lines.append("")
    return lines


def _fmt_ci(ci: list[float] | None, signed: bool = False) -> str:
    """` [lo, hi]`; for a difference (signed) a trailing `*` when the interval excludes 0."""
    if not ci:
        return ""
    f = "{:+.2f}" if signed else "{:.2f}"
    significant = signed and (ci[0] > 0 or ci[1] < 0)
    return " [" + f.format(ci[0]) + ", " + f.format(ci[1]) + "]" + (" *" if significant else "")


def task_tables(name: str, task: dict, models: list[str], languages: list[str]) -> list[str]:
    """One table per metric: rows = languages + average, columns = models (best in bold), Δ vs the first model, n."""
    level = int(round(100 * task.get("confidence", 0.95)))
    lines = [f"## {TASK_TITLES.get(name, name)}", "", task.get("description", ""), ""]
    if task.get("bootstrap_samples"):
        lines += [f"Brackets: {level}% bootstrap interval ({task['bootstrap_samples']} resamples of the items; for Δ paired "
                  "on the same items). A Δ whose interval contains 0 is not a measurable difference; `*` marks one that excludes 0. "
                  "Bold = best value in the row, measurable or not.", ""]
    per_lang = task["per_language"]
    order = [lang for lang in languages if lang in per_lang] + [lang for lang in per_lang if lang not in languages]
    has_source = any("source" in v.get(models[0], {}) for v in per_lang.values() if "skipped" not in v)
    for metric in task["metrics"]:
        head = ["language", *[f"{m} {metric}" for m in models], *[f"Δ {m}" for m in models[1:]], "n"] + (["source"] if has_source else [])
        lines += [f"### {metric}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for lang in [*order, "average"]:
            if lang == "average":
                if not task["average"]:
                    continue
                cells_src, label = task["average"], f"average ({task['average'][models[0]]['languages']} languages)"
            elif "skipped" in per_lang[lang]:
                lines.append("| " + " | ".join([lang, f"skipped: {per_lang[lang]['skipped']}", *[""] * (len(head) - 2)]) + " |")
                continue
            else:
                cells_src, label = per_lang[lang], lang
            vals = [cells_src[m][metric] for m in models]
            best = max(vals)
            cells = [(f"**{v:.3f}**" if v == best and vals.count(best) == 1 else f"{v:.3f}") + _fmt_ci(cells_src[m]["ci"].get(metric))
                     for m, v in zip(models, vals)]
            delta_cis = task["delta_ci"] if lang == "average" else {m: cells_src[m].get("delta_ci", {}) for m in models[1:]}
            deltas = [f"{v - vals[0]:+.3f}" + _fmt_ci(delta_cis.get(m, {}).get(metric), signed=True)
                      for m, v in zip(models[1:], vals[1:])]
            row = [label, *cells, *deltas, str(cells_src[models[0]]["n"])]
            if has_source:
                row.append(cells_src[models[0]].get("source", ""))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines


def report_markdown(metrics: dict, summary: dict) -> str:
    models = list(metrics["models"])
    lines = ["# bootembed report", "", f"Languages: {', '.join(metrics['languages'])}. Config hash `{metrics['config_hash']}`.", ""]
    task_results = metrics.get("tasks", {})
    if "retrieval" not in task_results:
        lines += legacy_retrieval_tables(metrics) + ["![retrieval](retrieval.png)", ""]
    for name, task in task_results.items():
        lines += task_tables(name, task, models, metrics["languages"] + sorted(metrics.get("skipped", {})))
        if name == "retrieval":
            lines += ["![retrieval](retrieval.png)", ""]
    if len(task_results) > 1:
        lines += ["![tasks](tasks.png)", ""]
    strategies = summary.get("strategies", [])
    if strategies:
        lines += ["## Training data per strategy", "",
                  "`non_synthetic` = the baseline trained on as many human-made cross-lingual NLI triplets as the largest "
                  "synthetic set.", "",
                  "| strategy | generated | parsed | kept | trained on | final loss | main drop reasons | note |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(str(r[k]) for k in ("strategy", "generated", "parsed", "kept", "trained_on", "final_loss",
                                                      "top_drop_reasons", "note")) + " |" for r in strategies]
        lines.append("")
    lines += ["## Data", ""]
    lines += [f"- {k}: {v}" for k, v in summary.items() if not isinstance(v, list)]
    examples = summary.get("examples", [])
    if examples:
        lines += ["", "### Example triplets", "", "| strategy | lang | anchor | positive | hard negative |", "|---|---|---|---|---|"]
        for ex in examples:
            cell = lambda s: (s or "").replace("|", "\\|")[:140]  # noqa: E731
            lines.append(f"| {ex.get('strategy', 'icl')} | {ex['lang']} | {cell(ex['anchor'])} | {cell(ex['positive'])} | "
                         f"{cell(ex['negative'])} |")
    return "\n".join(lines) + "\n"


LABELLED_MODELS = 3  # plots label each bar with its value up to this many models side by side


def plot_retrieval(metrics: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs, models = [*metrics["languages"], "average"], list(metrics["models"])
    fig, axes = plt.subplots(1, 2, figsize=(5 + 0.4 * len(langs) * len(models), 4), sharey=True)
    width = 0.8 / len(models)
    for ax, (direction, label) in zip(axes, (("to_eng", "x -> eng"), ("from_eng", "eng -> x"))):
        for k, m in enumerate(models):
            vals = [metrics["models"][m]["average" if lang == "average" else "per_language"] for lang in langs]
            vals = [v[direction] if lang == "average" else v[lang][direction] for v, lang in zip(vals, langs)]
            bars = ax.bar(np.arange(len(langs)) + k * width, vals, width, label=m)
            if len(models) <= LABELLED_MODELS:  # more bars than that: the labels overlap; the tables have the numbers
                ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(np.arange(len(langs)) + width * (len(models) - 1) / 2, langs)
        ax.set_title(f"Bitext retrieval acc@1, {label}")
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("accuracy@1")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tasks(metrics: dict, path: str) -> None:
    """Per-task summary: every metric's average over languages per model, with its bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task_results = {k: v for k, v in metrics.get("tasks", {}).items() if v["average"]}
    models = list(metrics["models"])
    wide = 3.2 * max(1.0, len(models) / LABELLED_MODELS)
    fig, axes = plt.subplots(1, max(1, len(task_results)), figsize=(1.5 + wide * max(1, len(task_results)), 4), squeeze=False)
    width = 0.8 / max(1, len(models))
    for ax, (name, task) in zip(axes[0], task_results.items()):
        names = task["metrics"]
        for k, m in enumerate(models):
            avg = task["average"][m]
            vals = [avg[n] for n in names]
            x = np.arange(len(names)) + k * width
            bars = ax.bar(x, vals, width, label=m)
            if len(models) <= LABELLED_MODELS:
                ax.bar_label(bars, fmt="%.2f", fontsize=7, label_type="center")
            with_ci = [(xi, v, avg["ci"][n]) for xi, v, n in zip(x, vals, names) if avg["ci"].get(n)]
            if with_ci:  # metrics without an interval (macro-F1) get no error bar
                xs, vs, cis = zip(*with_ci)
                err = np.clip(np.array([[v - c[0], c[1] - v] for v, c in zip(vs, cis)]).T, 0, None)
                ax.errorbar(xs, vs, yerr=err, fmt="none", ecolor="black", capsize=3)
        ax.set_xticks(np.arange(len(names)) + width * (len(models) - 1) / 2, names, rotation=20, fontsize=8)
        ax.set_title(f"{TASK_TITLES.get(name, name)}\n(average of {task['average'][models[0]]['languages']} languages)", fontsize=9)
        ax.set_ylim(0, 1.05)
    if task_results:
        axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def data_summary(inputs: dict[str, str], strategies: list[str]) -> dict:
    """Counts and example triplets from the upstream stages, for the report."""
    summary: dict = {}
    for stage in ("seeds", "synthesize", "filter", "train"):
        manifest = read_json(inputs[f"{stage}_manifest"]) if f"{stage}_manifest" in inputs else None
        if manifest:
            summary[f"{stage} counts"] = manifest["counts"]
            summary[f"{stage} seconds"] = manifest["seconds"]
            if "drop_reasons" in manifest.get("details", {}):
                summary[f"{stage} drop reasons"] = manifest["details"]["drop_reasons"]
    summary["strategies"] = strategy_summary(inputs, strategies)
    if "triplets" in inputs:
        triplets = pq.read_table(inputs["triplets"]).to_pylist()
        by_group: dict[tuple, list] = {}
        for t in triplets:
            by_group.setdefault((t.get("strategy", "icl"), t["lang"]), []).append(t)
        summary["examples"] = [{**t, "strategy": key[0]} for key in sorted(by_group) for t in by_group[key][:2]]
    return summary


def strategy_summary(inputs: dict[str, str], strategies: list[str]) -> list[dict]:
    """Per strategy (and the baseline): generated, parsed, kept, trained-on counts and the main drop reasons."""
    manifests = {s: read_json(inputs[f"{s}_manifest"]) or {} for s in ("synthesize", "filter", "train")
                 if f"{s}_manifest" in inputs}
    synth = manifests.get("synthesize", {}).get("details", {})
    filt = manifests.get("filter", {}).get("details", {})
    train = manifests.get("train", {}).get("details", {})
    rows = []
    from pipeline.train import BASELINE

    if not manifests:  # `bootembed eval` of given models: no run produced them
        return rows
    for strategy in [*strategies, *([BASELINE] if BASELINE in train.get("variants", {}) else [])]:
        generated = synth.get("per_strategy", {}).get(strategy, {})
        reasons = Counter(filt.get("drop_reasons_per_strategy", {}).get(strategy, {}))
        variant = train.get("variants", {}).get(strategy, {})
        rows.append({"strategy": strategy, "generated": generated.get("rows", "-"), "parsed": generated.get("ok", "-"),
                     "kept": filt.get("kept_per_strategy", {}).get(strategy, "-"),
                     "trained_on": variant.get("triplets", "-"),
                     "final_loss": f"{variant['final_loss']:.3f}" if "final_loss" in variant else "-",
                     "top_drop_reasons": ", ".join(f"{r} {n}" for r, n in reasons.most_common(3)) or "-",
                     "note": train.get("skipped", {}).get(strategy, "")})
    return rows


# ---------------------------------------------------------------- the stage

def trained_models(models_dir: str, cfg: RunConfig) -> dict[str, str]:
    """{variant: folder} in report order: the non-synthetic baseline, then the strategies as configured."""
    from pipeline.train import BASELINE

    found = {name: join(models_dir, name) for name in sorted(os.listdir(models_dir))
             if os.path.isfile(os.path.join(models_dir, name, "modules.json"))}
    order = [BASELINE, *cfg.synthesis.strategies]
    return {name: found[name] for name in sorted(found, key=lambda n: order.index(n) if n in order else len(order))}


def run(cfg: RunConfig, inputs: dict[str, str], out_dir: str) -> StageOutput:
    from pipeline.models import resolve_model

    models = {"base": resolve_model(cfg.train.encoder, cfg.cache_dir), **trained_models(inputs["models"], cfg)}
    return evaluate_models(cfg, models, inputs, out_dir)


def evaluate_models(cfg: RunConfig, models: dict[str, str], inputs: dict[str, str], out_dir: str) -> StageOutput:
    """Every model on every task, side by side in one report; the first model is the one deltas refer to.

    inputs: "eval" (the seeds stage's eval.parquet) and, for the report's data section, upstream manifests.
    """
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    columns = set(pq.read_schema(inputs["eval"]).names)
    if not REQUIRED_COLUMNS <= columns:
        raise ValueError(f"evaluate: {inputs['eval']} lacks columns {sorted(REQUIRED_COLUMNS - columns)} (it has {sorted(columns)})")
    rows = pq.read_table(inputs["eval"]).to_pylist()
    present = {r["lang"] for r in rows}
    langs = [lang for lang in cfg.languages if lang in present]
    skipped = {lang: "no held-out UDHR text for this language" for lang in cfg.languages if lang not in present}
    task_data, task_skipped = prepare_tasks(cfg, cfg.languages)  # these tasks need no UDHR text
    results = {name: evaluate_model(path, rows, langs, cfg, task_data) for name, path in models.items()} if langs else {}
    metrics = {
        "languages": langs,
        "skipped": skipped,
        "config_hash": cfg.section_hash(*RunConfig.model_fields),
        "task": "bitext retrieval accuracy@1 on held-out UDHR units",
        "models": {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in results.items()},
        "tasks": summarise_tasks(cfg, results, task_data, task_skipped, skipped) if langs else {},
    }
    names = ("metrics.json", "report.md", "retrieval.png", "tasks.png")
    metrics_path, report_path, plot_path, tasks_plot_path = (join(out_dir, n) for n in names)
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=2)
    outputs = {"metrics": metrics_path, "report": report_path}
    if langs:
        with open(report_path, "w") as f:
            f.write(report_markdown(metrics, data_summary(inputs, cfg.synthesis.strategies)))
        if cfg.evaluate.plot:
            plot_retrieval(metrics, plot_path)
            outputs["plot"] = plot_path
            if len(metrics["tasks"]) > 1:
                plot_tasks(metrics, tasks_plot_path)
                outputs["tasks_plot"] = tasks_plot_path
    else:
        with open(report_path, "w") as f:
            f.write("# bootembed report\n\nNo language has held-out evaluation text: " + json.dumps(skipped) + "\n")
    averages = {m: v["average"] for m, v in metrics["models"].items()}
    task_averages = {t: {m: {k: v for k, v in a.items() if k != "ci"} for m, a in r["average"].items()}
                     for t, r in metrics["tasks"].items() if t != "retrieval"}
    task_skips = {t: {lang: v["skipped"] for lang, v in r["per_language"].items() if "skipped" in v} for t, r in metrics["tasks"].items()}
    return StageOutput(outputs=outputs, counts={"languages": len(langs)},
                       details={"average": averages, "skipped": skipped, "tasks": task_averages, "task_skipped": task_skips})

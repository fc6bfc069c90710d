"""Stage `evaluate`: the base encoder, the non-synthetic baseline and one encoder per strategy, side by side, on held-out text.

Tasks:
- bitext retrieval (always): accuracy@1, MRR@10, nDCG@10 and MTEB's bitext-mining F1 between each
  target language and English over the held-out UDHR units. Queries are held-out units only; the
  candidate pool is every unit of the other language (held-out or not), so the task is not trivially small.
- cross-lingual retrieval on your parallel text (`parallel`): the same metrics, every sentence of
  the file a query, the pool every sentence of the other language in the file.
- within-language retrieval on your query/document pairs (`query_docs`): acc@1, MRR@10, nDCG@10,
  the pool every document of the file.
- STS (`sts`) on your scored pairs: Spearman / Pearson correlation.
- bilingual lexicon induction (`bli`): P@1 / P@5 of the nearest English word (cosine of word
  embeddings) among every English word of the language's dictionary (bundled FreeDict subsets,
  user dictd / TSV files, or one-word CLDR emoji names).
- topic classification (`classification`): a logistic-regression probe on frozen embeddings of
  CLDR emoji short names, trained on English, tested on the target language (zero-shot
  transfer), accuracy and macro-F1 over the 8 emoji groups.
Averages carry stratified bootstrap confidence intervals and differences to the base a paired
interval. Writes metrics.json (legacy retrieval under "models", every task under "tasks"),
report.md, report.html (the same report in one self-contained file), retrieval.png and tasks.png.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import os
import re
from collections import Counter

import numpy as np
import pyarrow.parquet as pq

from pipeline import _eval_tasks as tasks
from pipeline import fidelity as fidelity_measures
from pipeline._verdict import UPPER_BOUND, fmt_p, verdict, verdict_markdown
from pipeline.config import RunConfig
from pipeline.manifest import StageOutput, join, read_json
from pipeline.seeds import PIVOT

REQUIRED_COLUMNS = {"lang", "unit", "text", "held_out"}


class NothingScored(ValueError):
    """No task had data for any language: the report says why, and the run must not look like a success."""


# ---------------------------------------------------------------- metrics (pure numpy)

def retrieval_accuracy(queries: np.ndarray, query_ids: list, candidates: np.ndarray, candidate_ids: list) -> float:
    """Share of queries whose most similar candidate (cosine) carries the same id."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)  # [nq, d]
    c = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)  # [nc, d]
    best = (q @ c.T).argmax(axis=1)  # [nq]
    return float(np.mean([query_ids[i] == candidate_ids[j] for i, j in enumerate(best)]))


def bitext_items(rows: list[dict], embeddings: np.ndarray, lang: str) -> dict:
    """Per-query vectors (hit@1, reciprocal rank and nDCG within 10) and MTEB F1, both directions, plus pool sizes."""
    idx = {(r["lang"], r["unit"]): i for i, r in enumerate(rows)}
    held = sorted(r["unit"] for r in rows if r["lang"] == lang and r["held_out"] and (PIVOT, r["unit"]) in idx)
    src_all = sorted(r["unit"] for r in rows if r["lang"] == lang)
    eng_all = sorted(r["unit"] for r in rows if r["lang"] == PIVOT)
    emb = lambda l, units: embeddings[[idx[(l, u)] for u in units]]  # noqa: E731
    to_eng = tasks.bitext_direction(emb(lang, held), held, emb(PIVOT, eng_all), eng_all)
    from_eng = tasks.bitext_direction(emb(PIVOT, held), held, emb(lang, src_all), src_all)
    return {**tasks.both_directions(to_eng, from_eng), "candidates_eng": len(eng_all), "candidates_lang": len(src_all)}


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


# metric name in the report -> per-item vector key, or `=key` for a corpus-level float (no bootstrap interval)
RETRIEVAL_METRICS = {"x->eng acc@1": "hit1_to", "eng->x acc@1": "hit1_from", "x->eng MRR@10": "rr_to", "eng->x MRR@10": "rr_from",
                     "x->eng nDCG@10": "ndcg_to", "eng->x nDCG@10": "ndcg_from", "x->eng F1": "=f1_to", "eng->x F1": "=f1_from"}
QUERY_DOC_METRICS = {"acc@1": "hit1", "MRR@10": "rr", "nDCG@10": "ndcg"}
BLI_METRICS = {"P@1": "hit1", "P@5": "hit5"}
CLASSIFICATION_METRICS = {"accuracy": "correct", "macro-F1": "=macro_f1"}
STS_METRICS = {"Spearman": "=spearman", "Pearson": "=pearson"}
TASK_METRICS = {"retrieval": RETRIEVAL_METRICS, "parallel": RETRIEVAL_METRICS, "query_docs": QUERY_DOC_METRICS,
                "bli": BLI_METRICS, "classification": CLASSIFICATION_METRICS, "sts": STS_METRICS}
PRIMARY_METRIC = {"retrieval": "x->eng acc@1", "parallel": "x->eng acc@1", "query_docs": "nDCG@10", "bli": "P@1",
                  "classification": "accuracy", "sts": "Spearman"}
MTEB_NOTE = ("nDCG@10 (MTEB's retrieval main score) counts every right candidate in the top 10, discounted by "
             "log2(rank + 1); F1 is MTEB's bitext-mining main score (weighted F1 of the top-1 match, a corpus-level "
             "number without an interval). ")
TASK_DESCRIPTIONS = {
    "retrieval": "Bitext retrieval on held-out UDHR paragraphs: a query paragraph retrieves its translation among every "
                 "paragraph of the other language (cosine). `x->eng` retrieves the English translation of a "
                 "target-language paragraph, `eng->x` the reverse; acc@1 = right one first, MRR@10 = mean reciprocal "
                 "rank of the right one (0 beyond rank 10). " + MTEB_NOTE + "The pool is larger than the queries, "
                 "unlike MTEB's bitext data, so compare F1 with MTEB tables by definition, not by value. n = queries.",
    "parallel": "Cross-lingual retrieval on your parallel text (evaluate.parallel): every sentence of the file retrieves "
                "its translation among every sentence of the other language in the file (cosine), `x->eng` and `eng->x`; "
                "acc@1, MRR@10 as above. " + MTEB_NOTE + "Query and pool are the file's pairs, as in MTEB's bitext "
                "mining tasks. n = sentence pairs.",
    "query_docs": "Within-language retrieval on your queries and documents (evaluate.query_docs): each query ranks every "
                  "document of the file (cosine); acc@1 = a relevant document first, MRR@10 = reciprocal rank of the "
                  "first relevant one, nDCG@10 = MTEB's retrieval main score (every relevant document in the top 10, "
                  "discounted by log2(rank + 1)). n = queries.",
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
TASK_TITLES = {"retrieval": "Bitext retrieval", "parallel": "Cross-lingual retrieval (your parallel text)",
               "query_docs": "Within-language retrieval (your queries and documents)", "bli": "Bilingual lexicon induction",
               "classification": "Topic classification", "sts": "Semantic textual similarity"}
# tasks that read the user's files: task -> (evaluate field naming them per language, what the file is, an example)
USER_FILE_TASKS = {"sts": ("sts", "STS", "pairs.tsv"), "parallel": ("parallel", "parallel text", "[sentences.txt, english.txt]"),
                   "query_docs": ("query_docs", "query/document", "pairs.tsv")}


def active_tasks(cfg: RunConfig) -> list[str]:
    """The configured tasks beside retrieval; a task on user files also runs whenever its files are given."""
    given = [t for t, (field, _, _) in USER_FILE_TASKS.items() if getattr(cfg.evaluate, field) and t not in cfg.evaluate.tasks]
    return [*cfg.evaluate.tasks, *given]


def user_file(cfg: RunConfig, task: str, lang: str):
    """The file(s) the user gave `task` for `lang`; Skipped naming the config field when there are none."""
    field, what, example = USER_FILE_TASKS[task]
    files = getattr(cfg.evaluate, field)
    if lang not in files:
        raise tasks.Skipped(f"no {what} file for {lang} (evaluate.{field}: {{{lang}: {example}}})")
    return files[lang]


def classification_data(cfg: RunConfig, lang: str) -> tuple:
    ev = cfg.evaluate
    items = tasks.classification_items(lang, ev.classification_source, ev.classification_max_test, cfg.seed,
                                       ev.classification_max_train)
    if len(set(items[1])) < 2:
        raise tasks.Skipped(f"label set has one class ({items[1][0]}): nothing to classify")
    return items


def bli_data(cfg: RunConfig, lang: str) -> tuple:
    pairs, source = tasks.load_dictionary(lang, cfg.evaluate.dictionaries, cfg.evaluate.bli_cldr_fallback)
    return (*tasks.bli_items(pairs, cfg.evaluate.bli_max_words, cfg.seed), source)


TASK_DATA = {  # task -> (cfg, lang) -> the task's model-independent data; raises Skipped with the reason
    "sts": lambda cfg, lang: tasks.read_sts(user_file(cfg, "sts", lang)),
    "parallel": lambda cfg, lang: tasks.read_parallel(lang, user_file(cfg, "parallel", lang)),
    "query_docs": lambda cfg, lang: tasks.read_query_docs(user_file(cfg, "query_docs", lang)),
    "bli": bli_data,
    "classification": classification_data,
}


def prepare_tasks(cfg: RunConfig, langs: list[str]) -> tuple[dict, dict]:
    """Model-independent task data: (task -> lang -> data, task -> lang -> skipped reason).

    A malformed user file (misaligned, a missing column, a bad row) raises ValueError naming file and line, before
    any model is loaded; a missing file or too little data is a skipped row in the report.
    """
    data: dict[str, dict] = {t: {} for t in active_tasks(cfg)}
    skipped: dict[str, dict] = {t: {} for t in active_tasks(cfg)}
    for task, lang in itertools.product(data, langs):
        try:
            data[task][lang] = TASK_DATA[task](cfg, lang)
        except tasks.Skipped as e:
            skipped[task][lang] = str(e)
    return data, skipped


def check_user_files(cfg: RunConfig) -> None:
    """Read every evaluation file the user named (STS, parallel, query/document pairs), so a malformed one fails a run
    before its first stage rather than after hours of synthesis and training."""
    for task in USER_FILE_TASKS:
        if task in active_tasks(cfg):
            for lang in cfg.languages:
                try:
                    TASK_DATA[task](cfg, lang)
                except tasks.Skipped:
                    pass  # missing or too little data: a "skipped" row in the report, not an error


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
    emb = encode(texts)
    items: dict[str, dict] = {"retrieval": {lang: bitext_items(rows, emb, lang) for lang in langs}}
    per_lang = {lang: bitext_scores(rows, emb, lang) for lang in langs}
    keys = ("to_eng", "from_eng", "mrr10_to_eng", "mrr10_from_eng")
    average = {k: float(np.mean([m[k] for m in per_lang.values()])) for k in keys} if per_lang else {}
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
                     ("sts", lambda d: tasks.sts_scores(encode(d[0]), encode(d[1]), d[2])),
                     ("parallel", lambda d: tasks.parallel_items(encode(d[0]), encode(d[1]), d[0], d[1])),
                     ("query_docs", lambda d: tasks.query_doc_items(encode(d[0]), encode(d[1]), d[2]))):
        for lang, d in (task_data or {}).get(task, {}).items():
            try:
                items.setdefault(task, {})[lang] = fn(d)
            except tasks.Skipped as e:
                skipped.setdefault(task, {})[lang] = str(e)
    return {"per_language": per_lang, "average": average, "truncation": truncation(model, list(cache), cfg.train.prefix),
            "_items": items, "_skipped": skipped}


def truncation(model, texts: list[str], prefix: str) -> dict:
    """How many of the texts this model encoded were longer than it reads (max_seq_length), so were cut."""
    if not texts:
        return {"max_seq_length": model.max_seq_length, "texts": 0, "truncated_share": 0.0, "longest": 0}
    lengths = [len(ids) for ids in model.tokenizer([prefix + t for t in texts], truncation=False)["input_ids"]]
    return {"max_seq_length": model.max_seq_length, "texts": len(texts), "longest": max(lengths),
            "truncated_share": sum(n > model.max_seq_length for n in lengths) / len(lengths)}


def summarise_tasks(cfg: RunConfig, results: dict, task_data: dict, task_skipped: dict, skipped_langs: dict) -> dict:
    """metrics["tasks"]: every task with per-language scores, averages and bootstrap intervals."""
    models = list(results)
    ev = cfg.evaluate
    out = {}
    for task in ["retrieval", *active_tasks(cfg)]:
        skipped = {**(skipped_langs if task == "retrieval" else {}), **task_skipped.get(task, {})}
        for m in models:
            skipped.update(results[m]["_skipped"].get(task, {}))
        primary_key = TASK_METRICS[task][PRIMARY_METRIC[task]]
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
                     **tasks.summarise(per_item, skipped, TASK_METRICS[task], PRIMARY_METRIC[task], models,
                                       ev.bootstrap_samples, ev.confidence, cfg.seed, extra, reference=UPPER_BOUND)}
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
            delta_ps = task.get("delta_p", {}) if lang == "average" else {m: cells_src[m].get("delta_p", {}) for m in models[1:]}
            deltas = [f"{v - vals[0]:+.3f}" + _fmt_ci(delta_cis.get(m, {}).get(metric), signed=True)
                      + (f" {fmt_p(p)}" if (p := delta_ps.get(m, {}).get(metric)) is not None else "")
                      for m, v in zip(models[1:], vals[1:])]
            row = [label, *cells, *deltas, str(cells_src[models[0]]["n"])]
            if has_source:
                row.append(cells_src[models[0]].get("source", ""))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if task.get("detectable", {}).get(task["metrics"][0]) is not None:
        d = task["detectable"]
        lines += ["Smallest difference these items detect on the average (80% power, paired two-sided test): " +
                  ", ".join(f"{m} ±{d[m]:.3f}" for m in task["metrics"] if d.get(m) is not None) + ".", ""]
    return lines


def fidelity_tables(fidelity: dict | None) -> list[str]:
    """Triplet fidelity per strategy and language (pipeline/fidelity.py), before training."""
    if not fidelity:
        return []
    lines = ["## Triplet fidelity (before training)", ""]
    if fidelity.get("skipped"):
        return lines + [f"Not measured: {fidelity['skipped']}.", ""]
    labels = fidelity_measures.MEASURE_LABELS
    lines += [f"Every parsed triplet whose anchor has a human reference translation, scored against that reference under "
              f"an English encoder (`{fidelity.get('encoder', '?')}`). `pos nearest own ref`: share of positives whose "
              "nearest reference, among every reference of the language, is their own anchor's (chance = 1 / references); "
              "`chrF(pos, ref)`: character n-gram F-score, 0-100; `cos(neg, ref)`: how on-topic (hard) the negatives are; "
              "`neg below pos`: share of triplets whose negative is less like the reference than their positive, the order "
              "training relies on. The `parallel` strategy's positive is the reference itself.", "",
              "| strategy | language | n | " + " | ".join(labels[m] for m in fidelity_measures.MEASURES) + " | chance nearest |",
              "|" + "---|" * (4 + len(fidelity_measures.MEASURES))]
    rows = [(g["strategy"], g["lang"], g) for g in fidelity["per_group"]]
    rows += [(s, f"average ({v['languages']})", v) for s, v in fidelity["per_strategy"].items()]
    for strategy, lang, g in sorted(rows, key=lambda r: (r[0], r[1].startswith("average"), r[1])):
        cells = [f"{g[m]:.1f}" if m == "chrf" else f"{g[m]:.2f}" for m in fidelity_measures.MEASURES]
        lines.append(f"| {strategy} | {lang} | {g['n']} | " + " | ".join(cells) + f" | {g['chance_nearest']:.2f} |")
    return lines + [""]


def length_lines(metrics: dict, summary: dict) -> list[str]:
    """What share of texts training and evaluation cut to their token limits (UDHR units are paragraphs)."""
    lines = ["## Text lengths", ""]
    train = summary.get("train lengths")
    if train:
        cut = round(train["truncated_share"] * train["texts"])
        lines.append(f"- Training: max_length {train['max_length']} tokens; longest training text {train['longest']}; "
                     f"{cut} of {train['texts']} texts cut ({train['truncated_share']:.1%}).")
    for name, t in metrics.get("truncation", {}).items():
        if t["texts"]:
            cut = round(t["truncated_share"] * t["texts"])
            lines.append(f"- Evaluation, `{name}`: reads {t['max_seq_length']} tokens; longest text {t['longest']}; "
                         f"{cut} of {t['texts']} texts cut ({t['truncated_share']:.1%}).")
    return lines + [""] if len(lines) > 2 else []


def nothing_scored_report(metrics: dict) -> str:
    """The report of an evaluation with no score at all: why, task by task."""
    lines = ["# bootembed report", "", "**Evaluation scored nothing: no task had data for any language.** Nothing here "
             "says whether training helped. Give evaluation data for your languages: `evaluate.parallel` (sentences with "
             "their English translations), `evaluate.query_docs`, `evaluate.sts`, `evaluate.dictionaries`, or use a "
             "language that the bundled UDHR has.", "", "| task | language | why not scored |", "|---|---|---|"]
    for task, r in metrics.get("tasks", {}).items():
        for lang, v in r["per_language"].items():
            lines.append(f"| {task} | {lang} | {v.get('skipped', '')} |")
    return "\n".join(lines) + "\n"


def fidelity_of(inputs: dict[str, str]) -> dict | None:
    """The filter stage's fidelity.json, when this evaluation is part of a run that has one."""
    path = inputs.get("fidelity")
    return read_json(path) if path else None


def report_markdown(metrics: dict, summary: dict, plots: bool = True) -> str:
    """report.md; `plots` = whether retrieval.png and tasks.png are drawn beside it (links to them, or none)."""
    models = list(metrics["models"])
    task_results = metrics.get("tasks", {})
    scored_langs = list(dict.fromkeys(lang for t in task_results.values() for lang, v in t["per_language"].items()
                                      if "skipped" not in v)) or metrics["languages"]
    lines = ["# bootembed report", "", f"Languages: {', '.join(scored_langs)}. Config hash `{metrics['config_hash']}`.", ""]
    lines += verdict_markdown(metrics.get("verdict"))
    retrieval_plot = ["![retrieval](retrieval.png)", ""] if plots else []
    if "retrieval" not in task_results:
        lines += legacy_retrieval_tables(metrics) + retrieval_plot
    for name, task in task_results.items():
        lines += task_tables(name, task, models, metrics["languages"] + sorted(metrics.get("skipped", {})))
        if name == "retrieval":
            lines += retrieval_plot
    if len(task_results) > 1 and plots:
        lines += ["![tasks](tasks.png)", ""]
    lines += fidelity_tables(summary.get("fidelity"))
    lines += length_lines(metrics, summary)
    strategies = summary.get("strategies", [])
    if strategies:
        lines += ["## Training data per strategy", "",
                  "`human_nli` = the paper's non-synthetic baseline: as many human-made cross-lingual NLI triplets (14 "
                  "other languages) as the largest synthetic set. `parallel` = the in-language human baseline: each "
                  "anchor's reference translation as its positive.", "",
                  "| strategy | generated | parsed | kept | trained on | final loss | main drop reasons | note |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(str(r[k]) for k in ("strategy", "generated", "parsed", "kept", "trained_on", "final_loss",
                                                      "top_drop_reasons", "note")) + " |" for r in strategies]
        lines.append("")
    facts = [f"- {k}: {v}" for k, v in summary.items() if not isinstance(v, list) and k not in ("fidelity", "train lengths")]
    if facts:  # models evaluated outside a run (`bootembed eval`) have no upstream data to show
        lines += ["## Data", "", *facts]
    examples = summary.get("examples", [])
    if examples:
        lines += ["", "### Example triplets", "", "| strategy | lang | anchor | positive | hard negative |", "|---|---|---|---|---|"]
        for ex in examples:
            cell = lambda s: (s or "").replace("|", "\\|")[:140]  # noqa: E731
            lines.append(f"| {ex.get('strategy', 'icl')} | {ex['lang']} | {cell(ex['anchor'])} | {cell(ex['positive'])} | "
                         f"{cell(ex['negative'])} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- report.html

# report.html is report.md rendered on its own: one file to mail or open anywhere, plots inlined as base64 PNG,
# no external reference. The renderer knows only the markdown report_markdown writes (headings, paragraphs, `- `
# lists, pipe tables, images, **bold**, `code`), so report.md stays the one source of the report's content.
HTML_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; margin: 0; background: #f6f8fa; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 28px; border-bottom: 1px solid #d0d7de; padding-bottom: 8px; }
h2 { font-size: 22px; margin-top: 40px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 20px 0 6px; }
p { max-width: 90ch; }
nav ul { columns: 2; margin: 0; }
.scroll { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f0f3f6; position: sticky; top: 0; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #f8fafc; }
td.skipped { text-align: left; color: #6e7781; font-style: italic; white-space: normal; }
td.text { text-align: left; white-space: normal; max-width: 40ch; }
tr.average td { background: #eef2f6; border-top: 2px solid #8c959f; }  /* not bold: bold marks the best value */
img { max-width: 100%; height: auto; display: block; margin: 12px 0; }
code { background: #f0f3f6; padding: 1px 4px; border-radius: 4px; font-size: 90%; }
"""


def _inline_html(text: str) -> str:
    """Escaped text with the report's inline markdown: **bold**, `code`, and `\\|` (a pipe inside a table cell)."""
    out = html.escape(text.replace("\\|", "|"), quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def _table_cells(line: str) -> list[str]:
    """The cells of one pipe-table row; `\\|` inside a cell is text, not a separator."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


_SCORE_CELL = re.compile(r"^[*+\-\d.\[\] ,]+$")  # `**0.300** [0.10, 0.30]`, `+0.1 *`: right-aligned; other text wraps


def _html_table(lines: list[str]) -> str:
    head, rows = _table_cells(lines[0]), [_table_cells(line) for line in lines[2:]]  # lines[1] is |---|---|
    out = ["<div class=scroll><table>", "<thead><tr>" + "".join(f"<th>{_inline_html(c)}</th>" for c in head) + "</tr></thead>",
           "<tbody>"]
    for cells in rows:
        first = f"<td>{_inline_html(cells[0])}</td>"
        if len(cells) > 1 and cells[1].startswith("skipped:"):  # one cell across the row: the reason, not a score
            out.append(f"<tr>{first}<td class=skipped colspan={len(head) - 1}>{_inline_html(cells[1])}</td></tr>")
            continue
        rest = "".join(f"<td{'' if _SCORE_CELL.match(c) else ' class=text'}>{_inline_html(c)}</td>" for c in cells[1:])
        out.append(f"<tr{' class=average' if cells[0].startswith('average') else ''}>{first}{rest}</tr>")
    return "\n".join([*out, "</tbody></table></div>"])


def _html_image(line: str, image_dir: str) -> str:
    """An image line as an <img> with the PNG inlined; nothing when the file was not drawn."""
    alt, name = re.match(r"!\[(.*)\]\((.*)\)", line).groups()
    path = os.path.join(image_dir, name)
    if not os.path.isfile(path):
        return ""
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _line_kind(line: str) -> str:
    for prefix, kind in (("#", "heading"), ("|", "table"), ("![", "image"), ("- ", "list")):
        if line.startswith(prefix):
            return kind
    return "blank" if not line.strip() else "paragraph"


def markdown_to_html(markdown: str, image_dir: str) -> str:
    """The body of report.html from report.md: each run of lines of one kind becomes one HTML block."""
    blocks, sections = [], []
    for kind, group in itertools.groupby(markdown.split("\n"), key=_line_kind):
        lines = list(group)
        if kind == "heading":
            for line in lines:
                level, title = len(line) - len(line.lstrip("#")), line.lstrip("#").strip()
                anchor = f"s{len(sections) + 1}"
                if level == 2:  # sections get an anchor for the table of contents
                    sections.append((anchor, title))
                blocks.append(f"<h{level}{f' id={anchor}' if level == 2 else ''}>{_inline_html(title)}</h{level}>")
        elif kind == "table":
            blocks.append(_html_table(lines))
        elif kind == "image":
            blocks += [_html_image(line, image_dir) for line in lines]
        elif kind == "list":
            blocks.append("<ul>" + "".join(f"<li>{_inline_html(line[2:])}</li>" for line in lines) + "</ul>")
        elif kind == "paragraph":
            blocks.append(f"<p>{_inline_html(' '.join(lines))}</p>")
    if len(sections) > 2:  # a table of contents after the title and its first paragraph
        toc = "<nav><ul>" + "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in sections) + "</ul></nav>"
        blocks.insert(2, toc)
    return "\n".join(b for b in blocks if b)


def report_html(markdown: str, image_dir: str) -> str:
    """A self-contained HTML page of the report: inline CSS, plots as data: URIs, nothing fetched when it is opened."""
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1"><title>bootembed report</title>'
            f"<style>{HTML_STYLE}</style></head>\n<body><main>\n{markdown_to_html(markdown, image_dir)}\n</main></body></html>\n")


LABELLED_MODELS = 3  # plots label each bar with its value up to this many models side by side


def plot_retrieval(metrics: dict, path: str) -> None:
    """retrieval.png: `headline_figure`."""
    import matplotlib.pyplot as plt

    fig = headline_figure(metrics)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def headline_figure(metrics: dict):
    """The verdict's task (bitext retrieval when the languages have UDHR text): acc@1 both directions (or the task's
    primary metric) per language and on average, a bar per model, its bootstrap interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = (metrics.get("verdict") or {}).get("task") or next(t for t, r in metrics["tasks"].items() if r["average"])
    task = metrics["tasks"][name]
    shown = [m for m in ("x->eng acc@1", "eng->x acc@1") if m in task["metrics"]] or [task["primary"]]
    langs = [lang for lang, r in task["per_language"].items() if "skipped" not in r]
    models = list(task["average"])
    fig, axes = plt.subplots(1, len(shown), figsize=(2 + len(shown) * (2 + 0.45 * (len(langs) + 1) * len(models)), 4.2),
                             sharey=True, squeeze=False)
    width = 0.8 / len(models)
    for ax, metric in zip(axes[0], shown):
        for k, m in enumerate(models):
            cells = [task["per_language"][lang][m] for lang in langs] + [task["average"][m]]
            vals = np.array([c[metric] for c in cells])
            cis = [c["ci"].get(metric) or [v, v] for c, v in zip(cells, vals)]
            x = np.arange(len(cells)) + k * width
            bars = ax.bar(x, vals, width, label=m)
            err = np.clip(np.array([[v - ci[0] for v, ci in zip(vals, cis)], [ci[1] - v for v, ci in zip(vals, cis)]]), 0, None)
            ax.errorbar(x, vals, yerr=err, fmt="none", ecolor="black", capsize=3, linewidth=1)
            if len(models) <= LABELLED_MODELS:  # more bars than that: the labels overlap; the tables have the numbers
                ax.bar_label(bars, fmt="%.2f", fontsize=7, label_type="center")
        ax.set_xticks(np.arange(len(langs) + 1) + width * (len(models) - 1) / 2, [*langs, "average"])
        ax.set_title(f"{TASK_TITLES.get(name, name)}: {metric}", fontsize=10)
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel(f"{shown[0].split()[-1]} (bars: {int(round(100 * task.get('confidence', 0.95)))}% interval)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_tasks(metrics: dict, path: str) -> None:
    """tasks.png: `tasks_figure`."""
    import matplotlib.pyplot as plt

    fig = tasks_figure(metrics)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tasks_figure(metrics: dict):
    """Per-task summary: every metric's average over languages per model, with its bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task_results = {k: v for k, v in metrics.get("tasks", {}).items() if v["average"]}
    models = list(metrics["models"])
    rows = panel_rows({name: len(task["metrics"]) + 1 for name, task in task_results.items()}, TASKS_PLOT_SLOTS)
    scale = max(1.0, len(models) / LABELLED_MODELS)
    fig = plt.figure(figsize=(1.0 + 0.8 * TASKS_PLOT_SLOTS * scale, 0.5 + 3.6 * len(rows)))
    grid = fig.add_gridspec(len(rows), TASKS_PLOT_SLOTS)
    width = 0.8 / max(1, len(models))
    for r, row in enumerate(rows):
        for name, start, stop in row:
            ax = fig.add_subplot(grid[r, start:stop])
            draw_task_panel(ax, name, task_results[name], models, width)
            if r == 0 and start == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


TASKS_PLOT_SLOTS = 12  # columns of one row of tasks.png; a task's panel takes one per metric, plus one


def panel_rows(slots: dict[str, int], per_row: int) -> list[list[tuple[str, int, int]]]:
    """Tasks packed into rows in report order, each as (name, first column, last column + 1), so that every bar has
    the same width whatever the task's number of metrics (retrieval has 8, STS 2)."""
    rows: list[list[tuple[str, int, int]]] = [[]]
    used = 0
    for name, n in slots.items():
        n = min(n, per_row)
        if used + n > per_row:
            rows.append([])
            used = 0
        rows[-1].append((name, used, used + n))
        used += n
    return rows


def draw_task_panel(ax, name: str, task: dict, models: list[str], width: float) -> None:
    """One task's averages over languages: a bar group per metric, a bar per model, bootstrap intervals as error bars."""
    names = task["metrics"]
    lowest = 0.0
    for k, m in enumerate(models):
        avg = task["average"][m]
        vals = [avg[n] for n in names]
        lowest = min(lowest, *vals)
        x = np.arange(len(names)) + k * width
        bars = ax.bar(x, vals, width, label=m)
        if len(models) <= LABELLED_MODELS:
            ax.bar_label(bars, fmt="%.2f", fontsize=7, label_type="center")
        with_ci = [(xi, v, avg["ci"][n]) for xi, v, n in zip(x, vals, names) if avg["ci"].get(n)]
        if with_ci:  # metrics without an interval (macro-F1, F1) get no error bar
            xs, vs, cis = zip(*with_ci)
            err = np.clip(np.array([[v - c[0], c[1] - v] for v, c in zip(vs, cis)]).T, 0, None)
            ax.errorbar(xs, vs, yerr=err, fmt="none", ecolor="black", capsize=3)
    ax.set_xticks(np.arange(len(names)) + width * (len(models) - 1) / 2, names, rotation=30, ha="right", fontsize=8)
    ax.set_title(f"{TASK_TITLES.get(name, name)}\n(average of {task['average'][models[0]]['languages']} languages)", fontsize=9)
    ax.set_ylim(lowest - 0.05 if lowest < 0 else 0, 1.05)  # a negative correlation stays visible


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
            if stage == "train" and "lengths" in manifest.get("details", {}):
                summary["train lengths"] = manifest["details"]["lengths"]
    summary["strategies"] = strategy_summary(inputs, strategies)
    summary["fidelity"] = fidelity_of(inputs)
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
    results = {name: evaluate_model(path, rows, langs, cfg, task_data) for name, path in models.items()}
    metrics = {
        "languages": langs,
        "skipped": skipped,
        "config_hash": cfg.section_hash(*RunConfig.model_fields),
        "task": "bitext retrieval accuracy@1 on held-out UDHR units",
        "models": {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in results.items()},
        "tasks": summarise_tasks(cfg, results, task_data, task_skipped, skipped),
        "truncation": {name: r["truncation"] for name, r in results.items()},
    }
    scored = [task for task, r in metrics["tasks"].items() if r["average"]]
    metrics["verdict"] = verdict(metrics, fidelity_of(inputs)) if scored else None
    names = ("metrics.json", "report.md", "report.html", "retrieval.png", "tasks.png")
    metrics_path, report_path, html_path, plot_path, tasks_plot_path = (join(out_dir, n) for n in names)
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=2)
    outputs = {"metrics": metrics_path, "report": report_path, "report_html": html_path}
    plots = bool(scored) and cfg.evaluate.plot
    if plots:  # drawn before the report, which report.html inlines
        plot_retrieval(metrics, plot_path)
        outputs["plot"] = plot_path
        if len(scored) > 1:
            plot_tasks(metrics, tasks_plot_path)
            outputs["tasks_plot"] = tasks_plot_path
    report = report_markdown(metrics, data_summary(inputs, cfg.synthesis.strategies), plots) if scored else \
        nothing_scored_report(metrics)
    with open(report_path, "w") as f:
        f.write(report)
    with open(html_path, "w") as f:
        f.write(report_html(report, out_dir))
    if not scored:
        raise NothingScored(f"evaluate scored nothing: no task had data for any of {cfg.languages}. Why, per task: "
                            f"{report_path}. Give evaluation data: evaluate.parallel (your translations), "
                            "evaluate.query_docs, evaluate.sts, evaluate.dictionaries, or a language of the bundled UDHR")
    averages = {m: v["average"] for m, v in metrics["models"].items()}
    task_averages = {t: {m: {k: v for k, v in a.items() if k != "ci"} for m, a in r["average"].items()}
                     for t, r in metrics["tasks"].items() if t != "retrieval"}
    task_skips = {t: {lang: v["skipped"] for lang, v in r["per_language"].items() if "skipped" in v} for t, r in metrics["tasks"].items()}
    return StageOutput(outputs=outputs, counts={"languages": len({lang for r in metrics["tasks"].values() for lang in r["per_language"]
                                                                  if "skipped" not in r["per_language"][lang]})},
                       details={"average": averages, "skipped": skipped, "tasks": task_averages, "task_skipped": task_skips,
                                "verdict": metrics["verdict"]})

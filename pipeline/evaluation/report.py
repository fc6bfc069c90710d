"""report.md: the verdict, one table per task and metric, triplet fidelity, text lengths and the run's data.

The Markdown is the one source of the report's content; report_html.py renders the same text as one HTML page.
"""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq

from pipeline import fidelity as fidelity_measures
from pipeline._verdict import VERDICT_TASKS, fmt_p, significant, verdict_markdown
from pipeline.evaluation.lora import FULL, LORA, shown_metrics
from pipeline.evaluation.tasks import TASK_TITLES
from pipeline.layout import BASELINE
from pipeline.manifest import read_json


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
    level = int(round(100 * task["confidence"]))  # evaluate.confidence, as summarise recorded it
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


def _mb(size: int | None) -> str:
    if size is None:
        return "-"
    mb = size / 1e6
    return f"{mb:.1f}" if mb >= 10 else f"{mb:.2f}"


def _lora_delta(result: dict, cells: dict, metric: str) -> str:
    """`+0.012 [-0.05, +0.07] p = .71`: LoRA - full on one row of a pairing's task result (`cells`: a language's
    scores, whose LoRA entry carries its interval and p, or the average's, whose are the result's)."""
    if cells is result["average"]:
        ci, p = result["delta_ci"].get(LORA, {}).get(metric), result["delta_p"].get(LORA, {}).get(metric)
    else:
        ci, p = cells[LORA].get("delta_ci", {}).get(metric), cells[LORA].get("delta_p", {}).get(metric)
    return f"{cells[LORA][metric] - cells[FULL][metric]:+.3f}" + _fmt_ci(ci, signed=True) + (f" {fmt_p(p)}" if p is not None else "")


def _headline_task(pair: dict) -> str | None:
    """The task a pairing is summed up on: the first with scores in the verdict's order (retrieval when there is UDHR)."""
    return next((t for t in (*VERDICT_TASKS, *pair["tasks"]) if t in pair["tasks"] and pair["tasks"][t]["average"]), None)


def lora_headline(strategy: str, pair: dict) -> str:
    """One line per strategy: the LoRA encoders against the full fine-tune on the headline task's primary metric."""
    task = _headline_task(pair)
    if task is None:
        return f"- `{strategy}`: no language was scored by both its adapter and the full fine-tune."
    result = pair["tasks"][task]
    metric = result["primary"]
    avg = result["average"]
    delta = avg[LORA][metric] - avg[FULL][metric]
    ci = result["delta_ci"].get(LORA, {}).get(metric)
    word = ("LoRA measurably " + ("above" if delta > 0 else "below") + " the full fine-tune") if significant(ci) else \
        "no measurable difference"
    p = result["delta_p"].get(LORA, {}).get(metric)
    return (f"- `{strategy}`: LoRA {avg[LORA][metric]:.3f} vs full fine-tune {avg[FULL][metric]:.3f} ({TASK_TITLES.get(task, task)}, "
            f"{metric}, {avg[FULL]['languages']} language(s), {avg[FULL]['n']} items): Δ {delta:+.3f}{_fmt_ci(ci, signed=True)}"
            f"{f', {fmt_p(p)}' if p is not None else ''}: {word}.")


def lora_tables(pairing: dict | None) -> list[str]:
    """metrics["lora_vs_full"] (pipeline/evaluation/lora.py): per strategy, each language's LoRA encoder beside the full
    fine-tune of the same data, the difference with its paired interval, and the adapters' size beside the model's."""
    if not pairing:
        return []
    level = int(round(100 * pairing.get("confidence", 0.95)))
    lines = ["## LoRA adapters beside the full fine-tune", "",
             "Each language is scored by its own LoRA adapter (merged into the encoder: `models/lora-<id>`) beside the full "
             "fine-tune of the strategy whose triplets the adapter learned from, on the same items. Δ = LoRA - full; "
             f"brackets: {level}% paired bootstrap interval ({pairing.get('bootstrap_samples', 0)} resamples), `*` marks one "
             "that excludes 0; p: paired permutation test. In the tables above, `lora-<strategy>` (`lora` when each adapter "
             "learned every strategy's triplets) is these adapters as one encoder: each language scored by its own.", ""]
    strategies = pairing["strategies"]
    lines += [lora_headline(s, pair) for s, pair in strategies.items()]
    lines += [f"- `{s}`: not compared: {why}." for s, why in pairing.get("skipped", {}).items()]
    lines += [f"- `{s}`: no adapter for {', '.join(pair['without_adapter'])} (too few triplets to train one): the base "
              f"encoder stands in for {'it' if len(pair['without_adapter']) == 1 else 'them'} in `{pair['lora']}` above, "
              "left out here." for s, pair in strategies.items() if pair.get("without_adapter")]
    mixed = [s for s, pair in strategies.items() if not pair["same_data"]]
    if mixed:
        lines.append("- The adapters learned every strategy's triplets of their language (`train.lora.per: language`), the "
                     f"full fine-tune of {', '.join(f'`{s}`' for s in mixed)} only that strategy's: the difference mixes "
                     "data and method. `per: language_strategy` compares like with like.")
    lines.append("")
    if strategies:
        lines += ["Size on disk (the adapter's folder: peft's weights and config; the full fine-tune's: a whole "
                  "sentence-transformers model, which one language costs without LoRA):", "",
                  "| adapter | language | strategy | triplets | adapter MB | full fine-tune MB | adapter / full |",
                  "|---|---|---|---|---|---|---|"]
        for strategy, pair in strategies.items():
            for lang, a in pair["adapters"].items():
                share = f"{a['bytes'] / pair['full_bytes']:.1%}" if a.get("bytes") and pair.get("full_bytes") else "-"
                lines.append(f"| {a['adapter']} | {lang} | {strategy} | {a.get('triplets') if a.get('triplets') is not None else '-'} "
                             f"| {_mb(a.get('bytes'))} | {_mb(pair.get('full_bytes'))} | {share} |")
        lines.append("")
    others = []
    for strategy, pair in strategies.items():
        shown_task = _headline_task(pair)
        for task, result in pair["tasks"].items():
            metrics = shown_metrics(task, result["metrics"])
            if task != shown_task:
                others += [(strategy, task, m, result) for m in metrics]
                continue
            head = ["language", "adapter", *[f"{who} {m}" for m in metrics for who in ("full", "LoRA", "Δ")], "n"]
            lines += [f"### `{strategy}`: {TASK_TITLES.get(task, task)}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            rows = [(lang, pair["adapters"][lang]["adapter"], result["per_language"][lang]) for lang in result["per_language"]]
            if result["average"]:
                rows.append((f"average ({result['average'][FULL]['languages']} languages)", "", result["average"]))
            for label, adapter, cells in rows:
                row = [label, adapter]
                for m in metrics:
                    row += [f"{cells[FULL][m]:.3f}", f"{cells[LORA][m]:.3f}", _lora_delta(result, cells, m)]
                lines.append("| " + " | ".join([*row, str(cells[FULL]["n"])]) + " |")
            lines.append("")
    if others:
        lines += ["### Other tasks, average over languages", "",
                  "| strategy | task | metric | full | LoRA | Δ | languages | n |", "|---|---|---|---|---|---|---|---|"]
        for strategy, task, m, result in others:
            avg = result["average"]
            lines.append(f"| {strategy} | {TASK_TITLES.get(task, task)} | {m} | {avg[FULL][m]:.3f} | {avg[LORA][m]:.3f} | "
                         f"{_lora_delta(result, avg, m)} | {avg[FULL]['languages']} | {avg[FULL]['n']} |")
        lines.append("")
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


PRECISION_NOTES = {"bf16": " Encoders run in bf16 (evaluate.precision): scores may differ from fp32's by a query or two "
                            "(measured on the demo: at most one query of 23 per language); every model alike."}


def report_markdown(metrics: dict, summary: dict, plots: bool = True) -> str:
    """report.md; `plots` = whether retrieval.png and tasks.png are drawn beside it (links to them, or none)."""
    models = list(metrics["models"])
    task_results = metrics.get("tasks", {})
    scored_langs = list(dict.fromkeys(lang for t in task_results.values() for lang, v in t["per_language"].items()
                                      if "skipped" not in v)) or metrics["languages"]
    lines = ["# bootembed report", "", f"Languages: {', '.join(scored_langs)}. Config hash `{metrics['config_hash']}`." +
             PRECISION_NOTES.get(metrics.get("precision", "fp32"), ""), ""]
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
    lines += lora_tables(metrics.get("lora_vs_full"))
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

# ---------------------------------------------------------------- the run's data, from the upstream stages' manifests

def fidelity_of(inputs: dict[str, str]) -> dict | None:
    """The filter stage's fidelity.json, when this evaluation is part of a run that has one."""
    path = inputs.get("fidelity")
    return read_json(path) if path else None


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

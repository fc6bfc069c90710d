"""Stage `evaluate`: the base encoder, the non-synthetic baseline and one encoder per strategy, side by side, on held-out text.

Tasks (pipeline/evaluation/tasks.py says what each measures):
- bitext retrieval (always): accuracy@1, MRR@10, nDCG@10 and MTEB's bitext-mining F1 between each
  target language and English over the held-out UDHR units;
- cross-lingual retrieval on your parallel text (`parallel`), within-language retrieval on your query/document pairs
  (`query_docs`), STS on your scored pairs (`sts`);
- bilingual lexicon induction (`bli`) and topic classification with a probe on frozen embeddings (`classification`).
Averages carry stratified bootstrap confidence intervals and differences to the base a paired interval. Writes
metrics.json (legacy retrieval under "models", every task under "tasks"), report.md, report.html (the same report in
one self-contained file), retrieval.png and tasks.png.

A run trained with train.lora shows its LoRA encoders as one model per strategy (`lora-<strategy>`: each language
scored by its own adapter), each language's adapter beside the full fine-tune of the same data (metrics.json
"lora_vs_full", a report section; pipeline/evaluation/lora.py), and writes adapters.json: each adapter's numbers on its
language, keyed by adapter id. The adapter registry (train/lora/registry.json) stays as the train stage wrote
it: a stage writes only in its own folder (a run kept at a URI uploads just that folder; the registry keeps vouching
for its data and base digests), and numbers of a later, different evaluation never mix with an older one's there.
`pipeline.encoder_lora.adapter_evaluations` reads adapters.json back beside the registry, and only while the train
stage that adapters.json was computed on is the run's current one; `bootembed serve` shows them in /v1/models.

This module only orchestrates: read the data, encode every text once per model, score, summarise, write. The pieces
are in pipeline/evaluation/.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq

from pipeline import encoder_lora
from pipeline._verdict import verdict
from pipeline.config import RunConfig
from pipeline.evaluation import Skipped, encoding
from pipeline.evaluation import lora as lora_pairing
from pipeline.evaluation import metrics as scoring
from pipeline.evaluation.plots import plot_retrieval, plot_tasks
from pipeline.evaluation.report import data_summary, fidelity_of, nothing_scored_report, report_markdown
from pipeline.evaluation.report_html import report_html
from pipeline.evaluation.summary import summarise_tasks
from pipeline.evaluation.tasks import check_user_files, prepare_tasks  # noqa: F401 - check_user_files: run.py's pre-flight
from pipeline.layout import lora_encoders, trained_models
from pipeline.manifest import StageOutput, join, read_json
from pipeline.records import PIVOT

REQUIRED_COLUMNS = {"lang", "unit", "text", "held_out"}
LEGACY_KEYS = ("to_eng", "from_eng", "mrr10_to_eng", "mrr10_from_eng")  # metrics["models"][m]["average"]


class NothingScored(ValueError):
    """No task had data for any language: the report says why, and the run must not look like a success."""


def run(cfg: RunConfig, inputs: dict[str, str], out_dir: str) -> StageOutput:
    from pipeline.models import resolve_model

    models = {"base": resolve_model(cfg.train.encoder, cfg.cache_dir), **trained_models(inputs["models"], cfg.synthesis.strategies),
              **lora_encoders(inputs.get("lora"), inputs["models"])}
    return evaluate_models(cfg, models, inputs, out_dir)


def evaluate_models(cfg: RunConfig, models: dict[str, str], inputs: dict[str, str], out_dir: str) -> StageOutput:
    """Every model on every task, side by side in one report; the first model is the one deltas refer to.

    inputs: "eval" (the seeds stage's eval.parquet) and, for the report's data section, upstream manifests.
    """
    import torch

    torch.set_num_threads(os.cpu_count() or 1)  # the stage runs alone
    if cfg.evaluate.precision == "bf16" and not encoding.native_bf16():
        print("[evaluate] evaluate.precision is bf16, but this CPU has no native bf16 arithmetic (AVX512-BF16 or AMX): "
              "encoding will be slower than in fp32", flush=True)
    rows = read_eval_rows(inputs["eval"])
    present = {r["lang"] for r in rows}
    langs = [lang for lang in cfg.languages if lang in present]
    skipped = {lang: "no held-out UDHR text for this language" for lang in cfg.languages if lang not in present}
    task_data, task_skipped = prepare_tasks(cfg, cfg.languages)  # these tasks need no UDHR text
    texts = encoding.distinct_texts([[r["text"] for r in rows], *(task_texts(task, d) for task, data in task_data.items()
                                                                  for d in data.values())])
    train_manifest = read_json(inputs["train_manifest"]) if "train_manifest" in inputs else None
    lora_models = {m: v for m, v in lora_pairing.lora_variants((train_manifest or {}).get("details")).items() if m in models}
    # An adapter is scored on its own language only (the report uses nothing else of it): with a thousand languages,
    # scoring every adapter on every language would encode a thousand times more than the report shows.
    results = {name: evaluate_model(path, *(language_scope(lora_models[name]["language"], rows, langs, task_data)
                                            if name in lora_models else (rows, langs, task_data, texts)), cfg)
               for name, path in models.items()}
    groups = lora_pairing.composites(lora_models, cfg.synthesis.strategies, cfg.languages)
    if lora_models:  # a train.lora run: its adapters as one encoder per strategy, each language scored by its own
        results = lora_results(results, lora_models, groups, next(iter(models)), langs)
    metrics = {
        "languages": langs,
        "skipped": skipped,
        "config_hash": cfg.section_hash(*RunConfig.model_fields),
        "task": "bitext retrieval accuracy@1 on held-out UDHR units",
        "precision": cfg.evaluate.precision,
        "models": {name: r["legacy"] | {"truncation": r["truncation"]} for name, r in results.items()},
        "tasks": summarise_tasks(cfg, {m: r["items"] for m, r in results.items()}, {m: r["skipped"] for m, r in results.items()},
                                 task_data, task_skipped, skipped),
        "truncation": {name: r["truncation"] for name, r in results.items()},
    }
    if lora_models:  # each language's adapter beside the full fine-tune of the same data
        metrics["lora_vs_full"] = lora_pairing.pair_lora(
            cfg, {m: r["items"] for m, r in results.items()}, metrics["tasks"], groups, lora_models,
            {m: encoder_lora.folder_bytes(p) for m, p in models.items() if m in cfg.synthesis.strategies})
    scored = [task for task, r in metrics["tasks"].items() if r["average"]]
    metrics["verdict"] = verdict(metrics, fidelity_of(inputs)) if scored else None
    outputs = write_outputs(cfg, metrics, scored, inputs, out_dir)
    if not scored:
        raise NothingScored(f"evaluate scored nothing: no task had data for any of {cfg.languages}. Why, per task: "
                            f"{outputs['report']}. Give evaluation data: evaluate.parallel (your translations), "
                            "evaluate.query_docs, evaluate.sts, evaluate.dictionaries, or a language of the bundled UDHR")
    if lora_models:
        outputs["adapters"] = write_adapter_evaluations(metrics, groups, lora_models, train_manifest, out_dir)
    return stage_output(metrics, skipped, outputs)


def lora_results(results: dict[str, dict], lora_models: dict[str, dict], groups: dict[str, dict[str, str]], base: str,
                 langs: list[str]) -> dict[str, dict]:
    """`results` with the per-adapter models (`lora-<id>`) replaced by one per strategy (lora.composites): each language
    scored by its own adapter, by the base encoder where it has none."""
    results = dict(results)
    for name, own in groups.items():
        items, skipped = lora_pairing.composite_items({m: r["items"] for m, r in results.items()},
                                                      {m: r["skipped"] for m, r in results.items()}, own, base)
        results[name] = {"legacy": legacy_scores(items.get("retrieval", {}), langs), "items": items, "skipped": skipped,
                         "truncation": results[next(iter(own.values()))]["truncation"]}  # one tokenizer and length for all
    return {m: r for m, r in results.items() if m not in lora_models}


def write_adapter_evaluations(metrics: dict, groups: dict[str, dict[str, str]], lora_models: dict[str, dict],
                              train_manifest: dict, out_dir: str) -> str:
    """adapters.json: {"train_fingerprint", "config_hash", "adapters": {id: its numbers}} (lora.adapter_evaluations).

    The train stage's fingerprint says which adapters these numbers are of: encoder_lora.adapter_evaluations ignores
    the file once the train stage has run again."""
    path = join(out_dir, encoder_lora.EVALUATIONS)
    record = {"train_fingerprint": train_manifest.get("fingerprint"), "config_hash": metrics["config_hash"],
              "adapters": lora_pairing.adapter_evaluations(metrics["tasks"], metrics["lora_vs_full"], groups, lora_models)}
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    return path


def read_eval_rows(path: str) -> list[dict]:
    """The seeds stage's eval.parquet: {lang, unit, text, held_out} per UDHR unit."""
    columns = set(pq.read_schema(path).names)
    if not REQUIRED_COLUMNS <= columns:
        raise ValueError(f"evaluate: {path} lacks columns {sorted(REQUIRED_COLUMNS - columns)} (it has {sorted(columns)})")
    return pq.read_table(path).to_pylist()


# task -> the parts of its data (tasks.TASK_DATA) that are texts to encode: sentences, words, queries, documents
ENCODED_PARTS = {"bli": (0, 1), "classification": (0, 2), "sts": (0, 1), "parallel": (0, 1), "query_docs": (0, 1)}


def task_texts(task: str, data: tuple) -> list[str]:
    """The texts of one language's data for `task` that its scoring encodes."""
    return [t for part in ENCODED_PARTS[task] for t in data[part]]


def language_scope(lang: str, rows: list[dict], langs: list[str], task_data: dict) -> tuple[list[dict], list[str], dict, list[str]]:
    """(rows, langs, task_data, texts) of one language: its UDHR units and English's (the same retrieval pool, so the
    same scores as among all languages), its tasks' data, and the texts these encode."""
    rows = [r for r in rows if r["lang"] in (lang, PIVOT)]
    task_data = {task: {lang: data[lang]} for task, data in task_data.items() if lang in data}
    texts = encoding.distinct_texts([[r["text"] for r in rows], *(task_texts(task, d) for task, data in task_data.items()
                                                                  for d in data.values())])
    return rows, [lang] if lang in langs else [], task_data, texts


def evaluate_model(path: str, rows: list[dict], langs: list[str], task_data: dict, texts: list[str], cfg: RunConfig) -> dict:
    """One model on every task: {"legacy": retrieval scores {per_language, average}, "truncation",
    "items": task -> lang -> per-item scores, "skipped": task -> lang -> why this model could not score it}."""
    emb = encoding.encode_cached(path, texts, cfg.train.prefix, cfg.evaluate.batch_size, cfg.cache_dir, cfg.evaluate.precision)
    items, skipped = score_tasks(emb, rows, langs, cfg, task_data)
    return {"legacy": legacy_scores(items["retrieval"], langs), "truncation": emb.truncation(), "items": items,
            "skipped": skipped}


def legacy_scores(retrieval: dict[str, dict], langs: list[str]) -> dict:
    """metrics["models"][model]: retrieval scores {per_language, average} from its per-language retrieval items."""
    per_lang = {lang: scoring.bitext_scores(retrieval[lang]) for lang in langs}
    average = {k: float(np.mean([m[k] for m in per_lang.values()])) for k in LEGACY_KEYS} if per_lang else {}
    average["queries"] = sum(m["queries"] for m in per_lang.values())
    return {"per_language": per_lang, "average": average}


def score_tasks(emb: encoding.Embeddings, rows: list[dict], langs: list[str], cfg: RunConfig, task_data: dict) -> tuple[dict, dict]:
    """(task -> lang -> per-item scores, task -> lang -> skipped reason) of one model's embeddings."""
    items: dict[str, dict] = {"retrieval": {lang: scoring.bitext_items(rows, emb.of([r["text"] for r in rows]), lang)
                                            for lang in langs}}
    skipped: dict[str, dict] = {}
    probes: dict[tuple, object] = {}  # one probe per training set (the same English texts for every language)

    def classify(d: tuple) -> dict:
        key = (tuple(d[0]), tuple(d[1]))
        if key not in probes:
            probes[key] = scoring.fit_probe(emb.of(d[0]), d[1], cfg.seed)
        return scoring.probe_scores(None, d[1], emb.of(d[2]), d[3], clf=probes[key])

    for task, fn in (("bli", lambda d: scoring.bli_scores(emb.of(d[0]), emb.of(d[1]), d[1], d[2])),
                     ("classification", classify),
                     ("sts", lambda d: scoring.sts_scores(emb.of(d[0]), emb.of(d[1]), d[2])),
                     ("parallel", lambda d: scoring.parallel_items(emb.of(d[0]), emb.of(d[1]), d[0], d[1])),
                     ("query_docs", lambda d: scoring.query_doc_items(emb.of(d[0]), emb.of(d[1]), d[2]))):
        for lang, d in task_data.get(task, {}).items():
            try:
                items.setdefault(task, {})[lang] = fn(d)
            except Skipped as e:
                skipped.setdefault(task, {})[lang] = str(e)
    return items, skipped


def write_outputs(cfg: RunConfig, metrics: dict, scored: list[str], inputs: dict[str, str], out_dir: str) -> dict[str, str]:
    """metrics.json, the plots, report.md and report.html in out_dir; returns {output name: path}."""
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
    return outputs


def stage_output(metrics: dict, skipped: dict, outputs: dict[str, str]) -> StageOutput:
    """The manifest's counts and details: averages per model and task, what was skipped, the verdict."""
    averages = {m: v["average"] for m, v in metrics["models"].items()}
    task_averages = {t: {m: {k: v for k, v in a.items() if k != "ci"} for m, a in r["average"].items()}
                     for t, r in metrics["tasks"].items() if t != "retrieval"}
    task_skips = {t: {lang: v["skipped"] for lang, v in r["per_language"].items() if "skipped" in v} for t, r in metrics["tasks"].items()}
    scored_langs = {lang for r in metrics["tasks"].values() for lang, v in r["per_language"].items() if "skipped" not in v}
    return StageOutput(outputs=outputs, counts={"languages": len(scored_langs)},
                       details={"average": averages, "skipped": skipped, "tasks": task_averages, "task_skipped": task_skips,
                                "verdict": metrics["verdict"]})

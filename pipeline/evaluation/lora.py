"""LoRA encoders in the report: one column per strategy, and each language's adapter beside the full fine-tune.

With `train.lora` the train stage writes one adapter per language, or per language and strategy (`train/lora/<id>`,
evaluated as the model `lora-<id>`: merged into its base in memory, or read from `models/lora-<id>` when
`train.lora.export_merged` wrote that) and records in its manifest what each learned from (`details.variants["lora-<id>"]`:
adapter, language, strategy, triplets, adapter_bytes). An adapter is its language's encoder only: scored on other
languages it says nothing anyone would serve, and with many languages one column per adapter would bury the report.
So the evaluation shows LoRA as one encoder per strategy (`composites`): `lora-<strategy>` (with `per:
language_strategy`) or `lora` (with `per: language`, each adapter having learned every strategy's triplets of its
language), which scores each language with that language's own adapter; a language without an adapter (too few
triplets to train one) is scored with the base encoder, which is what it has.

`pair_lora` then sets each language's adapter beside the full fine-tune of the strategy it learned from
(`models/<strategy>`, trained with `train.lora.keep_full_finetune`), on the same items, with `summary.summarise` (the
full fine-tune as the reference): per language and on the average, LoRA - full with its paired bootstrap interval and
permutation p, for every task:

    metrics["lora_vs_full"] = {
        "description": str, "confidence": float, "bootstrap_samples": int,
        "strategies": {strategy: {
            "full": model name of the full fine-tune, "full_bytes": its folder's bytes, "lora": the composite's name,
            "same_data": whether each adapter learned exactly this strategy's triplets of its language,
            "adapters": {lang: {"model": "lora-<id>", "adapter": id, "triplets": int, "bytes": adapter folder bytes}},
            "without_adapter": [languages scored with the base encoder, left out of the pairing],
            "tasks": {task: summarise(...) over models ["full", "lora"]: per_language[lang]["lora"]["delta_ci"] etc.}}},
        "skipped": {strategy: why it has no pairing}}

`adapter_evaluations` gives each adapter's own numbers (its language only: scores, Δ vs the base and vs the full
fine-tune) for evaluate/adapters.json, which `pipeline.encoder_lora.adapter_evaluations` reads back beside the
adapter registry (and the server's /v1/models shows).
"""

from __future__ import annotations

from pipeline.config import RunConfig
from pipeline.evaluation.summary import summarise
from pipeline.evaluation.tasks import PRIMARY_METRIC, TASK_METRICS

FULL, LORA = "full", "lora"  # the two models of each pairing's task results
DESCRIPTION = ("Each language scored by its own LoRA adapter (merged into the base encoder) beside the full fine-tune of the "
               "strategy whose triplets the adapter learned from, on the same items; Δ = LoRA - full, with a paired "
               "bootstrap interval and a paired permutation p.")
NO_FULL = "no full fine-tune of this strategy to compare with: set train.lora.keep_full_finetune: true"
NO_ADAPTER = "no adapter learned from this strategy's triplets"


def shown_metrics(task: str, metrics: list[str]) -> list[str]:
    """The metrics the report's LoRA section and adapters.json carry for `task`: its primary one, and the reverse
    direction's for the two-way retrieval tasks (x->eng acc@1 and eng->x acc@1)."""
    primary = PRIMARY_METRIC[task]
    reverse = primary.replace("x->eng", "eng->x") if primary.startswith("x->eng") else None
    return [m for m in metrics if m in (primary, reverse)]


def lora_variants(train_details: dict | None) -> dict[str, dict]:
    """{model name: its record} of the LoRA encoders in a train manifest's details (variants carrying an `adapter`)."""
    return {name: v for name, v in (train_details or {}).get("variants", {}).items() if "adapter" in v}


def composite_name(strategy: str | None) -> str:
    """The report's name of the LoRA encoders of one strategy (`lora-parallel`), or of all (`lora`, per: language)."""
    return "lora" if strategy is None else f"lora-{strategy}"


def composites(variants: dict[str, dict], strategies: list[str], languages: list[str]) -> dict[str, dict[str, str]]:
    """{composite name: {language: its adapter's model}}, in the strategies' order, languages in config order."""
    found: dict[str, dict[str, str]] = {}
    for model, v in sorted(variants.items()):
        found.setdefault(composite_name(v["strategy"]), {})[v["language"]] = model
    order = [composite_name(None), *(composite_name(s) for s in strategies)]
    rank = lambda name: order.index(name) if name in order else len(order)  # noqa: E731
    return {name: {lang: found[name][lang] for lang in [*languages, *sorted(set(found[name]) - set(languages))]
                   if lang in found[name]} for name in sorted(found, key=lambda n: (rank(n), n))}


def composite_items(items: dict[str, dict], skipped: dict[str, dict], own: dict[str, str], fallback: str) -> tuple[dict, dict]:
    """(task -> lang -> per-item scores, task -> lang -> why not scored) of one composite: each language's from its own
    adapter's model, the `fallback` model's (the base encoder) for a language without an adapter.

    items, skipped: model -> task -> lang -> ... (every model evaluated); own: {language: adapter model}."""
    out_items: dict[str, dict] = {}
    out_skipped: dict[str, dict] = {}
    for task in dict.fromkeys([*items[fallback], *skipped.get(fallback, {})]):
        for lang in dict.fromkeys([*items[fallback].get(task, {}), *skipped.get(fallback, {}).get(task, {})]):
            source = own.get(lang, fallback)
            if lang in items[source].get(task, {}):
                out_items.setdefault(task, {})[lang] = items[source][task][lang]
            elif lang in skipped.get(source, {}).get(task, {}):
                out_skipped.setdefault(task, {})[lang] = skipped[source][task][lang]
    return out_items, out_skipped


def pair_lora(cfg: RunConfig, items: dict[str, dict], tasks: dict, groups: dict[str, dict[str, str]],
              variants: dict[str, dict], full_bytes: dict[str, int]) -> dict:
    """metrics["lora_vs_full"] (see the module's docstring).

    items: model -> task -> lang -> per-item scores, the composites' among them; tasks: metrics["tasks"], whose scored
    languages are the ones paired; groups: `composites`; variants: `lora_variants`; full_bytes: model -> folder bytes.
    """
    ev = cfg.evaluate
    out: dict = {"description": DESCRIPTION, "confidence": ev.confidence, "bootstrap_samples": ev.bootstrap_samples,
                 "strategies": {}, "skipped": {}}
    for strategy in cfg.synthesis.strategies:
        lora = next((n for n in (composite_name(strategy), composite_name(None)) if n in groups), None)
        if lora is None:
            out["skipped"][strategy] = NO_ADAPTER
            continue
        if strategy not in items:
            out["skipped"][strategy] = NO_FULL
            continue
        own = groups[lora]
        paired = {}
        for task, result in tasks.items():
            langs = [lang for lang in own if "skipped" not in result["per_language"].get(lang, {"skipped": ""})]
            if langs:
                per_item = {lang: {FULL: items[strategy][task][lang], LORA: items[lora][task][lang]} for lang in langs}
                paired[task] = summarise(per_item, {}, TASK_METRICS[task], PRIMARY_METRIC[task], [FULL, LORA],
                                         ev.bootstrap_samples, ev.confidence, cfg.seed)
        scored = {lang for r in tasks.values() for lang, v in r["per_language"].items() if "skipped" not in v}
        out["strategies"][strategy] = {
            "full": strategy, "full_bytes": full_bytes.get(strategy), "lora": lora,
            "same_data": lora == composite_name(strategy),
            "adapters": {lang: {"model": m, "adapter": variants[m]["adapter"], "triplets": variants[m].get("triplets"),
                                "bytes": variants[m].get("adapter_bytes")} for lang, m in own.items()},
            "without_adapter": [lang for lang in cfg.languages if lang in scored and lang not in own],
            "tasks": paired}
    return out


def _delta(value: float, reference: float, ci: list[float] | None, p: float | None) -> dict:
    return {"delta": value - reference, "ci": ci, "p": p}


def adapter_evaluations(tasks: dict, pairing: dict, groups: dict[str, dict[str, str]], variants: dict[str, dict]) -> dict[str, dict]:
    """{adapter id: its numbers on its own language}: per task the shown metrics (`shown_metrics`) with n, their
    difference to the base encoder (the first model of metrics["tasks"]) and to each paired full fine-tune.

    {id: {"language", "strategy", "model", "triplets", "bytes", "scores": {task: {metric: value, "n": n}},
          "vs_base": {task: {metric: {"delta", "ci", "p"}}}, "vs_full": {strategy: {task: {metric: {...}}}}}}
    """
    out = {}
    for composite, own in groups.items():
        for lang, model in own.items():
            v = variants[model]
            entry: dict = {"language": lang, "strategy": v["strategy"], "model": model, "triplets": v.get("triplets"),
                           "bytes": v.get("adapter_bytes"), "scores": {}, "vs_base": {}, "vs_full": {}}
            for task, result in tasks.items():
                cells = result["per_language"].get(lang, {})
                if composite not in cells:
                    continue
                shown = shown_metrics(task, result["metrics"])
                base, mine = cells[next(iter(cells))], cells[composite]
                entry["scores"][task] = {m: mine[m] for m in shown} | {"n": mine["n"]}
                entry["vs_base"][task] = {m: _delta(mine[m], base[m], mine.get("delta_ci", {}).get(m),
                                                    mine.get("delta_p", {}).get(m)) for m in shown}
            for strategy, pair in pairing.get("strategies", {}).items():
                if pair["lora"] != composite:
                    continue
                for task, result in pair["tasks"].items():
                    cells = result["per_language"].get(lang)
                    if cells:
                        entry["vs_full"].setdefault(strategy, {})[task] = {
                            m: _delta(cells[LORA][m], cells[FULL][m], cells[LORA]["delta_ci"].get(m), cells[LORA]["delta_p"].get(m))
                            for m in shown_metrics(task, result["metrics"])}
            out[v["adapter"]] = entry
    return out

"""The answer to the user's one question, at the top of every report: did my language's encoder get better, and why?

`verdict` reads the task summaries (and triplet fidelity) and returns a structured verdict; `verdict_markdown`
renders it. The headline is decided on one task and metric: the first task with scores in VERDICT_TASKS order,
on its primary metric (held-out bitext retrieval x->eng acc@1 when the language has UDHR text).
"""

from __future__ import annotations

from pipeline.layout import BASELINE

VERDICT_TASKS = ("retrieval", "parallel", "query_docs", "sts", "classification", "bli")
UPPER_BOUND = "parallel"
TASK_NAMES = {"retrieval": "held-out UDHR bitext retrieval", "parallel": "retrieval on your parallel text",
              "query_docs": "retrieval on your queries and documents", "sts": "STS", "classification": "topic classification",
              "bli": "bilingual lexicon induction"}


def significant(ci: list[float] | None) -> bool:
    return bool(ci) and (ci[0] > 0 or ci[1] < 0)


def fmt_p(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p < .001" if p < 0.001 else f"p = {p:.3f}".replace("0.", ".")


def fmt_ci(ci: list[float] | None, percent: bool = False) -> str:
    if not ci:
        return ""
    if percent:
        return f" [{ci[0]:.0%}, {ci[1]:.0%}]"
    return f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def comparison(task: dict, model: str, metric: str) -> dict:
    """One trained model against the base on the task's average: values, Δ, interval, p, gap closed."""
    base = next(iter(task["average"]))
    avg = task["average"]
    out = {"model": model, "value": avg[model][metric], "base": avg[base][metric],
           "delta": avg[model][metric] - avg[base][metric],
           "ci": task["delta_ci"].get(model, {}).get(metric), "p": task.get("delta_p", {}).get(model, {}).get(metric)}
    gap = task.get("gap_closed", {}).get(model, {}).get(metric)
    if gap:
        out["gap_closed"] = gap
    return out


def verdict(metrics: dict, fidelity: dict | None) -> dict | None:
    """{task, metric, n, languages, headline, comparisons, best, detectable, fidelity_note}; None when nothing scored."""
    tasks = metrics.get("tasks", {})
    name = next((t for t in VERDICT_TASKS if tasks.get(t, {}).get("average")), None)
    if name is None:
        return None
    task = tasks[name]
    models = list(task["average"])
    metric = task["primary"]
    base = models[0]
    comparisons = [comparison(task, m, metric) for m in models[1:]]
    out = {"task": name, "metric": metric, "base": base, "n": task["average"][base]["n"],
           "languages": task["average"][base]["languages"], "comparisons": comparisons,
           "detectable": task.get("detectable", {}).get(metric), "confidence": task["confidence"]}
    if not comparisons:
        out["headline"] = "Only the base encoder was evaluated: nothing was trained to compare with."
        return out
    best = max(comparisons, key=lambda c: c["delta"])
    worst = min(comparisons, key=lambda c: c["delta"])
    out["best"] = best["model"]
    where = f"{TASK_NAMES.get(name, name)}, {metric}, {out['n']} items in {out['languages']} language(s)"
    if best["delta"] > 0 and significant(best["ci"]):
        out["outcome"] = "helped"
        out["headline"] = (f"Training helped. The best encoder, `{best['model']}`, scores {best['value']:.3f} against the "
                           f"base's {best['base']:.3f} ({where}): Δ {best['delta']:+.3f}{fmt_ci(best['ci'])}, {fmt_p(best['p'])}.")
    elif worst["delta"] < 0 and significant(worst["ci"]) and not any(c["delta"] > 0 and significant(c["ci"]) for c in comparisons):
        out["outcome"] = "hurt"
        out["headline"] = (f"Training hurt. `{worst['model']}` scores {worst['value']:.3f} against the base's "
                           f"{worst['base']:.3f} ({where}): Δ {worst['delta']:+.3f}{fmt_ci(worst['ci'])}, {fmt_p(worst['p'])}; "
                           "no encoder is measurably better than the base.")
    else:
        out["outcome"] = "no_change"
        why = ("every interval contains 0." if best["ci"] else
               "no interval was computed (evaluate.bootstrap_samples is 0), so no difference counts as measured.")
        out["headline"] = (f"No measurable change. The best encoder, `{best['model']}`, scores {best['value']:.3f} against the "
                           f"base's {best['base']:.3f} ({where}): Δ {best['delta']:+.3f}{fmt_ci(best['ci'])}, {fmt_p(best['p'])}; "
                           + why)
    synthetic = [c for c in comparisons if c["model"] not in (UPPER_BOUND, BASELINE)]
    if synthetic:
        out["best_synthetic"] = max(synthetic, key=lambda c: c["delta"])["model"]
    out["fidelity_note"] = fidelity_note(fidelity, [c["model"] for c in synthetic])
    return out


def fidelity_note(fidelity: dict | None, strategies: list[str]) -> str | None:
    """Why synthetic strategies did (not) help, from their triplets: how often a positive is nearest its own reference."""
    per = (fidelity or {}).get("per_strategy", {})
    shown = [s for s in strategies if s in per]
    if not shown:
        return None
    parts = [f"`{s}` {per[s]['positive_nearest']:.0%} (cos(pos, ref) {per[s]['positive_cos']:.2f}, {per[s]['n']} triplets)"
             for s in shown]
    chance = per[shown[0]]["chance_nearest"]
    weak = [s for s in shown if per[s]["positive_nearest"] < 0.5]
    note = (f"Triplet fidelity: the share of generated positives whose nearest reference translation is their own "
            f"anchor's is {', '.join(parts)}; chance is about {chance:.0%}.")
    if weak:
        verb = "writes" if len(weak) == 1 else "write"
        note += (f" {', '.join(f'`{s}`' for s in weak)} mostly {verb} positives that do not say what their anchor says, "
                 "so training on them cannot teach the encoder this language: a stronger generator (the vllm or openai "
                 "engine with a larger model) is the lever, and the `parallel` strategy shows the gain to expect.")
    return note


def verdict_markdown(v: dict | None) -> list[str]:
    """The report's opening section."""
    if v is None:
        return []
    lines = ["## Verdict", "", f"**{v['headline']}**", ""]
    level = int(round(100 * v["confidence"]))
    for c in v["comparisons"]:
        word = ("better than base" if c["delta"] > 0 else "worse than base") if significant(c["ci"]) else "no measurable difference"
        line = (f"- `{c['model']}`: {c['value']:.3f} vs base {c['base']:.3f}, Δ {c['delta']:+.3f}{fmt_ci(c['ci'])}, "
                f"{fmt_p(c['p'])}: {word}")
        gap = c.get("gap_closed")
        if gap:
            line += (f"; closes {gap['value']:.0%}{fmt_ci(gap['ci'], percent=True)} of the `parallel` strategy's gain "
                     "(human translations, the upper bound)")
        lines.append(line + ".")
    if v.get("fidelity_note"):
        lines.append(f"- {v['fidelity_note']}")
    if v.get("detectable") is not None:
        lines.append(f"- With these {v['n']} items, this evaluation detects a difference of about ±{v['detectable']:.3f} "
                     f"on {v['metric']} (80% power, two-sided paired test at {100 - level}%); smaller true differences may "
                     "go unseen, so \"no measurable difference\" is not \"no difference\".")
    lines += ["", f"Intervals: {level}% paired bootstrap; p: paired sign-flip permutation test against the base.", ""]
    return lines

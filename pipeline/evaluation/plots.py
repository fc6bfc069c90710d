"""The report's figures (matplotlib, drawn off-screen): retrieval.png, the verdict's task per language, and tasks.png,
every task's averages; each bar carries its bootstrap interval."""

from __future__ import annotations

import numpy as np

from pipeline.evaluation.tasks import TASK_TITLES

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
    axes[0][0].set_ylabel(f"{shown[0].split()[-1]} (bars: {int(round(100 * task['confidence']))}% interval)")
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

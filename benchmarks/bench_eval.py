"""Time of the `evaluate` stage on a finished run, this tree vs a baseline commit, measured in one invocation.

What it measures
    The real stage through the CLI (`bootembed evaluate CONFIG --force`) on a copy of a finished run (the demo:
    `bootembed run configs/demo.yaml`): the base encoder and every trained encoder on every task. Both versions run
    on the same copy at the same path (metrics.json records the config's hash, run_dir included), one after the
    other, alternating with --repeats; "stage s" is the stage's own time from its manifest, "wall s" the whole
    command (Python start, imports, config). The baseline's code is `git archive`d from --baseline into a temporary
    folder. The script also checks that both versions wrote the same metrics.json and report.md (apart from the
    config hash and the precision field, which change with the config schema: evaluate.precision is newer than 518e3d6).

    This tree keeps each model's vectors on disk (cache_dir/vectors/): its timed runs start from an empty vector
    cache (a first evaluation), and a last row times a rerun that finds every vector cached (a second evaluation of
    the same models: a changed report setting, `bootembed evaluate` again). The models come from your cache_dir,
    linked into a temporary one.

    --precision bf16 adds cold runs of this tree with evaluate.precision=bf16, and a table of what bf16 changes in
    the metrics: every model's averages of every task, bf16 minus fp32 (this tree's run), and the largest change of
    any per-language number.

    The machine may be shared: the load average is printed before and after; compare the ratio, not absolute
    numbers across invocations.

Run
    python benchmarks/bench_eval.py RUN_DIR [--baseline 518e3d6 | none] [--precision bf16] [--repeats 1] [--cache-dir DIR]
                                            [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARM = "this tree, vectors cached"
BF16 = "this tree, bf16"


def export_tree(ref: str, dest: Path) -> Path:
    """The repository at `ref`, without its history, in dest."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def evaluate_once(tree: Path, source_run: Path, run_dir: Path, cache_dir: Path, cold: bool = True,
                  settings: tuple[str, ...] = ()) -> tuple[float, float, bytes, str]:
    """(stage seconds, wall seconds, metrics.json, report.md) of one evaluate stage run by `tree`'s code on a fresh
    copy of source_run at run_dir; `cold`: with no vector cached; `settings`: more `--set` overrides."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    if cold:
        shutil.rmtree(cache_dir / "vectors", ignore_errors=True)
    shutil.copytree(source_run, run_dir, ignore=shutil.ignore_patterns("evaluate", "logs"))
    if tree != REPO:
        drop_newer_fields(run_dir / "config.yaml")
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pipeline.cli", "evaluate", str(run_dir / "config.yaml"), "--set", f"run_dir={run_dir}",
               "--set", f"cache_dir={cache_dir}", *(a for setting in settings for a in ("--set", setting)), "--force"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, check=False)  # failure reported below
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree}: evaluate failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    stage = json.loads((run_dir / "evaluate" / "manifest.json").read_text())["seconds"]
    return stage, wall, (run_dir / "evaluate" / "metrics.json").read_bytes(), (run_dir / "evaluate" / "report.md").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="A finished run (seeds, filter and train done), e.g. the demo's.")
    parser.add_argument("--baseline", default="518e3d6", help="Commit whose evaluate stage is the baseline ('none': no baseline).")
    parser.add_argument("--precision", choices=["bf16"], help="Also time this tree in this precision and show what it changes.")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cache-dir", default="~/.cache/bootembed", help="Where the run's models are cached (its cache_dir).")
    parser.add_argument("--keep", type=Path, help="Keep both versions' metrics.json and report.md here.")
    args = parser.parse_args()
    source = args.run_dir.resolve()
    if not (source / "train" / "manifest.json").is_file():
        raise SystemExit(f"{source}: no finished train stage (train/manifest.json); run `bootembed run CONFIG` first")

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        trees = {"this tree": REPO} if args.baseline == "none" else \
            {"baseline": export_tree(args.baseline, Path(tmp) / "baseline"), "this tree": REPO}
        variants = [(name, tree, ()) for name, tree in trees.items()] + [(WARM, REPO, ())]
        if args.precision:
            variants.append((BF16, REPO, (f"evaluate.precision={args.precision}",)))
        run_dir = Path(tmp) / "run"  # one path for both: metrics.json hashes the config, run_dir included
        cache_dir = Path(tmp) / "cache"
        cache_dir.mkdir()
        (cache_dir / "models").symlink_to(Path(args.cache_dir).expanduser().resolve() / "models")
        load_before = os.getloadavg()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
        outputs: dict[str, tuple[bytes, str]] = {}
        for _ in range(args.repeats):
            for name, tree, settings in variants:
                stage, wall, metrics, report = evaluate_once(tree, source, run_dir, cache_dir, cold=name != WARM,
                                                             settings=settings)
                times[name].append((stage, wall))
                outputs[name] = (metrics, report)
                print(f"  {name}: stage {stage:.1f} s, wall {wall:.1f} s", flush=True)
        load_after = os.getloadavg()

    reference = "baseline" if "baseline" in times else "this tree"
    base_stage = statistics.median(s for s, _ in times[reference])
    print(f"\nevaluate stage on {source} ({args.repeats} run(s) each, medians); load average before "
          f"{load_before[0]:.1f}, after {load_after[0]:.1f} on {os.cpu_count()} CPUs\n")
    print(f"| version | stage s | wall s | stage time vs {reference} |\n|---|---|---|---|")
    for name, runs in times.items():
        stage, wall = statistics.median(s for s, _ in runs), statistics.median(w for _, w in runs)
        label = f"{name} ({args.baseline})" if name == "baseline" else name
        print(f"| {label} | {stage:.1f} | {wall:.1f} | {base_stage / stage:.2f}x faster |")
    if "baseline" in outputs:
        for name in ("this tree", WARM):
            same_metrics = comparable_metrics(outputs["baseline"][0]) == comparable_metrics(outputs[name][0])
            same_report = comparable_report(outputs["baseline"][1]) == comparable_report(outputs[name][1])
            print(f"\n{name} vs baseline: metrics.json the same: {same_metrics}; report.md the same: {same_report}", end="")
        print(" (config hash, which changes with the config schema, and the precision field left out)")
    if BF16 in outputs:
        print_precision_changes(json.loads(outputs["this tree"][0]), json.loads(outputs[BF16][0]), args.precision)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for name, (metrics, report) in outputs.items():
            slug = {"baseline": "baseline", "this tree": "new", WARM: "cached", BF16: "bf16"}[name]
            (args.keep / f"metrics.{slug}.json").write_bytes(metrics)
            (args.keep / f"report.{slug}.md").write_text(report)
        print(f"kept in {args.keep}")


def drop_newer_fields(config: Path) -> None:
    """A run written by this tree records evaluate.precision, which a baseline older than it refuses as an unknown key;
    its default (fp32) is what every older version computes."""
    import yaml

    data = yaml.safe_load(config.read_text())
    if data.get("evaluate", {}).pop("precision", "fp32") != "fp32":
        raise SystemExit(f"{config}: evaluate.precision is not fp32; the baseline can only evaluate in fp32")
    config.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


SCHEMA_KEYS = ("config_hash", "precision")  # differ between versions whose config schema differs, not in scores


def comparable_metrics(metrics: bytes) -> dict:
    return {k: v for k, v in json.loads(metrics).items() if k not in SCHEMA_KEYS}


def comparable_report(report: str) -> list[str]:
    return [line for line in report.splitlines() if not line.startswith("Languages:")]  # the line with the hash


def print_precision_changes(fp32: dict, other: dict, precision: str) -> None:
    """Per task and model: each average metric in fp32 and `precision`, the difference, and the largest difference of
    a per-language number."""
    print(f"\n{precision} vs fp32 (this tree), averages over languages; max |Δ| per language in the last column\n")
    print(f"| task | model | metric | fp32 | {precision} | Δ | max per-language |Δ| |\n|---|---|---|---|---|---|---|")
    for task, result in fp32["tasks"].items():
        for model, average in result["average"].items():
            for metric in result["metrics"]:
                if metric not in average:
                    continue
                a, b = average[metric], other["tasks"][task]["average"][model][metric]
                per_lang = [abs(other["tasks"][task]["per_language"][lang][model][metric] - v[model][metric])
                            for lang, v in result["per_language"].items() if model in v]
                worst = f"{max(per_lang):.3f}" if per_lang else "-"
                print(f"| {task} | {model} | {metric} | {a:.3f} | {b:.3f} | {b - a:+.3f} | {worst} |")


if __name__ == "__main__":
    main()

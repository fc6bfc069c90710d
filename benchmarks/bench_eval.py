"""Time of the `evaluate` stage on a finished run, this tree vs a baseline commit, measured in one invocation.

What it measures
    The real stage through the CLI (`bootembed evaluate CONFIG --force`) on a copy of a finished run (the demo:
    `bootembed run configs/demo.yaml`): the base encoder and every trained encoder on every task. Both versions run
    on the same copy at the same path (metrics.json records the config's hash, run_dir included), one after the
    other, alternating with --repeats; "stage s" is the stage's own time from its manifest, "wall s" the whole
    command (Python start, imports, config). The baseline's code is `git archive`d from --baseline into a temporary
    folder. The script also checks that both versions wrote the same metrics.json, byte for byte.

    This tree keeps each model's vectors on disk (cache_dir/vectors/): its timed runs start from an empty vector
    cache (a first evaluation), and a last row times a rerun that finds every vector cached (a second evaluation of
    the same models: a changed report setting, `bootembed evaluate` again). The models come from your cache_dir,
    linked into a temporary one.

    The machine may be shared: the load average is printed before and after; compare the ratio, not absolute
    numbers across invocations.

Run
    python benchmarks/bench_eval.py RUN_DIR [--baseline 518e3d6] [--repeats 1] [--cache-dir DIR] [--keep DIR]
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


def export_tree(ref: str, dest: Path) -> Path:
    """The repository at `ref`, without its history, in dest."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def evaluate_once(tree: Path, source_run: Path, run_dir: Path, cache_dir: Path, cold: bool = True) -> tuple[float, float, bytes, str]:
    """(stage seconds, wall seconds, metrics.json, report.md) of one evaluate stage run by `tree`'s code on a fresh
    copy of source_run at run_dir; `cold`: with no vector cached."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    if cold:
        shutil.rmtree(cache_dir / "vectors", ignore_errors=True)
    shutil.copytree(source_run, run_dir, ignore=shutil.ignore_patterns("evaluate", "logs"))
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pipeline.cli", "evaluate", str(run_dir / "config.yaml"), "--set", f"run_dir={run_dir}",
               "--set", f"cache_dir={cache_dir}", "--force"]
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
    parser.add_argument("--baseline", default="518e3d6", help="Commit whose evaluate stage is the baseline.")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cache-dir", default="~/.cache/bootembed", help="Where the run's models are cached (its cache_dir).")
    parser.add_argument("--keep", type=Path, help="Keep both versions' metrics.json and report.md here.")
    args = parser.parse_args()
    source = args.run_dir.resolve()
    if not (source / "train" / "manifest.json").is_file():
        raise SystemExit(f"{source}: no finished train stage (train/manifest.json); run `bootembed run CONFIG` first")

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        trees = {"baseline": export_tree(args.baseline, Path(tmp) / "baseline"), "this tree": REPO}
        run_dir = Path(tmp) / "run"  # one path for both: metrics.json hashes the config, run_dir included
        cache_dir = Path(tmp) / "cache"
        cache_dir.mkdir()
        (cache_dir / "models").symlink_to(Path(args.cache_dir).expanduser().resolve() / "models")
        load_before = os.getloadavg()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in [*trees, WARM]}
        outputs: dict[str, tuple[bytes, str]] = {}
        for _ in range(args.repeats):
            for name, tree in [*trees.items(), (WARM, REPO)]:
                stage, wall, metrics, report = evaluate_once(tree, source, run_dir, cache_dir, cold=name != WARM)
                times[name].append((stage, wall))
                outputs[name] = (metrics, report)
                print(f"  {name}: stage {stage:.1f} s, wall {wall:.1f} s", flush=True)
        load_after = os.getloadavg()

    base_stage = statistics.median(s for s, _ in times["baseline"])
    print(f"\nevaluate stage on {source} ({args.repeats} run(s) each, medians); load average before "
          f"{load_before[0]:.1f}, after {load_after[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| version | stage s | wall s | stage time vs baseline |\n|---|---|---|---|")
    for name, runs in times.items():
        stage, wall = statistics.median(s for s, _ in runs), statistics.median(w for _, w in runs)
        label = f"{name} ({args.baseline})" if name == "baseline" else name
        print(f"| {label} | {stage:.1f} | {wall:.1f} | {base_stage / stage:.2f}x faster |")
    for name in ("this tree", WARM):
        same_metrics = outputs["baseline"][0] == outputs[name][0]
        same_report = outputs["baseline"][1] == outputs[name][1]
        print(f"\n{name} vs baseline: metrics.json identical: {same_metrics}; report.md identical: {same_report}", end="")
    print()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for name, (metrics, report) in outputs.items():
            slug = {"baseline": "baseline", "this tree": "new", WARM: "cached"}[name]
            (args.keep / f"metrics.{slug}.json").write_bytes(metrics)
            (args.keep / f"report.{slug}.md").write_text(report)
        print(f"kept in {args.keep}")


if __name__ == "__main__":
    main()

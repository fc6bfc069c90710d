"""Training throughput of the `train` stage vs sentence-transformers' own trainer, measured in one run.

What it measures
    Both trainers fine-tune the bundled multilingual-e5-small on the same synthetic triplets (non-English
    UDHR passages as anchors, the aligned English passage as positive, another English passage as hard
    negative), with the same batch size, max length, lr, 1 epoch, "query: " prefix on every text, frozen
    word embeddings, InfoNCE / MultipleNegativesRankingLoss at scale 1/temperature = 20, and the same
    number of torch threads.

    * bootembed: the real stage, `pipeline.train.run(cfg, {"triplets": path}, out_dir)` (Ray Train
      TorchTrainer, 1 worker), on a fresh local Ray instance started by this script.
    * sentence-transformers: `SentenceTransformerTrainer` + `MultipleNegativesRankingLoss` in this process.

    "steady samples/s" is the training loop alone (a sample = one triplet): the stage's per-epoch
    `samples_per_s` and the trainer's `train_samples_per_second`. "wall s" is everything, including the
    fixed cost (Ray start, worker start, model load, checkpoint, export / save), which the second table
    breaks down. The ratio is bootembed / sentence-transformers in steady state (goal: >= 1.0x).

    The machine may be shared, so both trainers run in the same invocation (alternating with --repeats,
    medians reported); compare the ratio, not absolute numbers across runs.

Run
    python benchmarks/bench_train.py [--triplets 256] [--batch-size 32] [--max-length 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep every Ray listener on loopback

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

ENCODER = "bundled:multilingual-e5-small"
CACHE_DIR = os.path.expanduser("~/.cache/bootembed")
ANCHOR_LANGUAGES = ["yor", "swh", "hau", "zul", "ibo", "xho", "som", "wol"]
PREFIX = "query: "
TEMPERATURE = 0.05
LR = 5e-5
WARMUP_RATIO = 0.1
SEED = 0


@dataclass
class Result:
    trainer: str
    triplets: int
    steps: int
    steady_samples_per_s: float
    wall_s: float
    startup_s: float  # everything before the training loop
    loop_s: float  # the training loop (what steady samples/s is computed from)
    finish_s: float  # everything after it: checkpoint, export / save


# ---------------------------------------------------------------- data

def build_triplets(n: int, seed: int = SEED) -> pa.Table:
    """n triplets: anchor = a UDHR unit in one of ANCHOR_LANGUAGES, positive = the same unit in English,
    negative = another English unit. Cycles over the available rows when n exceeds them."""
    from pipeline.corpus import load_udhr

    rows = load_udhr(["eng", *ANCHOR_LANGUAGES]).to_pylist()
    english = {r["unit"]: r["text"] for r in rows if r["lang"] == "eng"}
    anchors = [r for r in rows if r["lang"] != "eng" and r["unit"] in english]
    rng = random.Random(seed)
    rng.shuffle(anchors)
    units = sorted(english)
    out = {"id": [], "lang": [], "strategy": [], "anchor": [], "positive": [], "negative": []}
    for i in range(n):
        row = anchors[i % len(anchors)]
        other = rng.choice([u for u in units if u != row["unit"]])
        for key, value in (("id", f"{row['lang']}-{row['unit']}-{i}"), ("lang", row["lang"]), ("strategy", "udhr"),
                           ("anchor", row["text"]), ("positive", english[row["unit"]]), ("negative", english[other])):
            out[key].append(value)
    return pa.table(out)


# ---------------------------------------------------------------- bootembed (the real stage)

def run_bootembed(triplets_path: str, n: int, args, work_dir: str) -> Result:
    import ray

    import pipeline.train as stage
    from pipeline.config import validate_config

    cfg = validate_config({
        "languages": ANCHOR_LANGUAGES, "cache_dir": CACHE_DIR, "seed": SEED, "run_dir": work_dir,
        "train": {"encoder": ENCODER, "num_workers": 1, "cpus_per_worker": args.threads, "batch_size": args.batch_size,
                  "epochs": 1, "lr": LR, "warmup_ratio": WARMUP_RATIO, "temperature": TEMPERATURE,
                  "max_length": args.max_length, "prefix": PREFIX, "freeze_embeddings": True},
    }, source="bench_train")

    export_s = []
    real_export = stage.export_sentence_transformer

    def timed_export(*a, **kw):  # time the export step without changing it
        t = time.perf_counter()
        real_export(*a, **kw)
        export_s.append(time.perf_counter() - t)

    started = time.perf_counter()
    # One spare CPU beyond the worker's, so Ray Data's read tasks are never starved (RAY-NOTES.md).
    ray.init(address="local", num_cpus=max(2, int(args.threads) + 1), include_dashboard=False,
             object_store_memory=256 * 1024 * 1024, _node_ip_address="127.0.0.1", log_to_driver=args.verbose)
    stage.export_sentence_transformer = timed_export
    try:
        out = stage.run(cfg, {"triplets": triplets_path}, os.path.join(work_dir, "train"))
    finally:
        stage.export_sentence_transformer = real_export
        ray.shutdown()
    wall = time.perf_counter() - started

    epoch = out.details["epochs"][-1]
    loop_s, finish_s = float(epoch["seconds"]), sum(export_s)
    return Result("bootembed (Ray Train)", n, int(epoch["steps"]), float(out.details["samples_per_s"]), wall,
                  wall - loop_s - finish_s, loop_s, finish_s)


# ---------------------------------------------------------------- sentence-transformers

def run_sentence_transformers(triplets_path: str, n: int, args, work_dir: str) -> Result:
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from pipeline.models import resolve_model

    torch.set_num_threads(int(args.threads))
    started = time.perf_counter()
    model = SentenceTransformer(resolve_model(ENCODER, CACHE_DIR), device="cpu")
    model.max_seq_length = args.max_length
    model[0].auto_model.get_input_embeddings().weight.requires_grad_(False)
    steps = -(-n // args.batch_size)
    dataset = Dataset.from_dict(pq.read_table(triplets_path, columns=["anchor", "positive", "negative"]).to_pydict())
    training_args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(work_dir, "st"), num_train_epochs=1, per_device_train_batch_size=args.batch_size,
        learning_rate=LR, warmup_steps=int(steps * WARMUP_RATIO), lr_scheduler_type="linear",
        optim="adamw_torch", weight_decay=0.01,  # = torch.optim.AdamW defaults, as in the stage
        prompts=PREFIX, use_cpu=True, seed=SEED, save_strategy="no", report_to="none",
        logging_steps=10, disable_tqdm=not args.verbose, dataloader_pin_memory=False,
    )
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE))
    metrics = trainer.train().metrics
    t = time.perf_counter()
    model.save(os.path.join(work_dir, "st-model"))
    finish_s = time.perf_counter() - t
    wall = time.perf_counter() - started

    loop_s = float(metrics["train_runtime"])
    return Result("sentence-transformers", n, trainer.state.global_step, float(metrics["train_samples_per_second"]),
                  wall, wall - loop_s - finish_s, loop_s, finish_s)


# ---------------------------------------------------------------- report

def median_result(results: list[Result]) -> Result:
    first = results[0]
    med = lambda field: statistics.median(getattr(r, field) for r in results)  # noqa: E731
    return Result(first.trainer, first.triplets, first.steps, med("steady_samples_per_s"), med("wall_s"),
                  med("startup_s"), med("loop_s"), med("finish_s"))


def print_tables(bootembed: Result, st: Result, args) -> None:
    print(f"\nbatch {args.batch_size}, max length {args.max_length}, {args.threads} torch thread(s), "
          f"median of {args.repeats} run(s)\n")
    print("| trainer | triplets | steps | steady samples/s | wall s (incl. start-up) | ratio vs ST |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in (bootembed, st):
        ratio = r.steady_samples_per_s / st.steady_samples_per_s
        print(f"| {r.trainer} | {r.triplets} | {r.steps} | {r.steady_samples_per_s:.1f} | {r.wall_s:.1f} | {ratio:.2f}x |")
    print("\nfixed cost vs training loop (s):\n")
    print("| trainer | start-up (Ray, worker, model load) | training loop | checkpoint/export (save) |")
    print("|---|---:|---:|---:|")
    for r in (bootembed, st):
        print(f"| {r.trainer} | {r.startup_s:.1f} | {r.loop_s:.1f} | {r.finish_s:.1f} |")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--triplets", type=int, default=256, help="number of triplets (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="triplets per step (default 32)")
    p.add_argument("--max-length", type=int, default=32, help="token limit of each text (default 32)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of both trainers = the stage's train.cpus_per_worker (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="alternating runs of each trainer; medians reported")
    p.add_argument("--verbose", action="store_true", help="show Ray worker logs and progress bars")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        triplets_path = os.path.join(tmp, "triplets.parquet")
        pq.write_table(build_triplets(args.triplets), triplets_path)
        runs: dict[str, list[Result]] = {"bootembed": [], "st": []}
        for i in range(args.repeats):
            work = os.path.join(tmp, f"run{i}")
            order = ("st", "bootembed") if i % 2 == 0 else ("bootembed", "st")  # alternate: load drifts over time
            for name in order:
                bench = run_sentence_transformers if name == "st" else run_bootembed
                runs[name].append(bench(triplets_path, args.triplets, args, work))
            for r in (runs["bootembed"][-1], runs["st"][-1]):
                print(f"[bench] run {i + 1}: {r.trainer}: {r.steady_samples_per_s:.1f} samples/s, wall {r.wall_s:.1f} s",
                      flush=True)
        print_tables(median_result(runs["bootembed"]), median_result(runs["st"]), args)


if __name__ == "__main__":
    main()

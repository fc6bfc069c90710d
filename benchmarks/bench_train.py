"""Training throughput of the `train` stage vs sentence-transformers' own trainer, measured in one run.

What it measures
    Both trainers fine-tune the bundled multilingual-e5-small on the same synthetic triplets (non-English
    UDHR passages as anchors, the aligned English passage as positive, another English passage as hard
    negative), with the same batch size, max length, lr, 1 epoch, "query: " prefix on every text, frozen
    word embeddings, InfoNCE / MultipleNegativesRankingLoss at scale 1/temperature = 20, and the same
    number of torch threads.

    * bootembed: the real stage, `pipeline.train.run(cfg, {"triplets": path}, out_dir)` (Ray Train
      TorchTrainer, 1 worker), on a fresh local Ray instance started by this script; once with 1 model and
      once with 3 (three strategies of the same triplets, trained in turn by one worker group).
    * sentence-transformers: `SentenceTransformerTrainer` + `MultipleNegativesRankingLoss` in this process.
    * the cached loss: one optimizer step of the stage's own `backward_step`, uncached at --uncached-batch
      (default 64), with `train.mini_batch_size` (default 32) at that batch and at --cached-batch (default
      512: the paper's), each in a fresh process; "step memory" is the
      process's peak RSS during the step above its RSS before it (the model loaded), sampled every 5 ms.

    "steady samples/s" is the training loop alone (a sample = one triplet): the stage's per-epoch
    `samples_per_s` and the trainer's `train_samples_per_second`; the ratio is bootembed / sentence-
    transformers (goal: >= 1.0x). "fixed s per model" is everything else of a model's wall time (worker
    start, imports, model load, checkpoints, export / save) divided by the models trained (goal: <= 10 s);
    the Ray instance's start is shown apart (a `bootembed run` starts it once for every stage).

    The machine may be shared, so both trainers run in the same invocation (alternating with --repeats,
    medians reported); compare the ratio, not absolute numbers across runs.

Run
    python benchmarks/bench_train.py [--triplets 256] [--batch-size 32] [--max-length 32] [--threads 1]
        [--cached-batch 512] [--mini-batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
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


STRATEGIES = ["icl", "parallel", "xllora"]  # labels only: each model trains on the same triplets


@dataclass
class Result:
    trainer: str
    models: int
    triplets: int  # per model
    steps: int  # per model
    steady_samples_per_s: float
    wall_s: float  # every model, Ray start excluded
    loop_s: float  # the training loops (what steady samples/s is computed from), all models
    ray_start_s: float = 0.0

    @property
    def fixed_per_model_s(self) -> float:
        return (self.wall_s - self.loop_s) / self.models


# ---------------------------------------------------------------- data

def build_triplets(n: int, seed: int = SEED, strategies: tuple[str, ...] = ("udhr",)) -> pa.Table:
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
    table = pa.table(out)
    return pa.concat_tables([table.set_column(2, "strategy", pa.array([s] * n)) for s in strategies])


# ---------------------------------------------------------------- bootembed (the real stage)

def run_bootembed(triplets_path: str, n: int, models: int, args, work_dir: str) -> Result:
    import ray

    import pipeline.train as stage
    from pipeline.config import validate_config

    cfg = validate_config({
        "languages": ANCHOR_LANGUAGES, "cache_dir": CACHE_DIR, "seed": SEED, "run_dir": work_dir,
        "synthesis": {"strategies": STRATEGIES[:models]},
        "train": {"encoder": ENCODER, "num_workers": 1, "cpus_per_worker": args.threads, "batch_size": args.batch_size,
                  "epochs": 1, "lr": LR, "warmup_ratio": WARMUP_RATIO, "temperature": TEMPERATURE,
                  "max_length": args.max_length, "prefix": PREFIX, "freeze_embeddings": True,
                  "human_nli_baseline": False},
    }, source="bench_train")

    started = time.perf_counter()
    ray.init(address="local", num_cpus=max(2, int(args.threads) + 1), include_dashboard=False,
             object_store_memory=256 * 1024 * 1024, _node_ip_address="127.0.0.1", log_to_driver=args.verbose)
    ray_start = time.perf_counter() - started
    try:
        out = stage.run(cfg, {"triplets": triplets_path}, os.path.join(work_dir, f"train-{models}"))
    finally:
        ray.shutdown()
    wall = time.perf_counter() - started - ray_start

    epochs = [v["epochs"][-1] for v in out.details["variants"].values()]
    loop_s = sum(float(e["seconds"]) for e in epochs)
    return Result(f"bootembed (Ray Train), {models} model(s)", models, n, int(epochs[0]["steps"]),
                  statistics.median(float(e["samples_per_s"]) for e in epochs), wall, loop_s, ray_start)


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
    model.save(os.path.join(work_dir, "st-model"))
    wall = time.perf_counter() - started

    return Result("sentence-transformers", 1, n, trainer.state.global_step, float(metrics["train_samples_per_second"]),
                  wall, float(metrics["train_runtime"]))


# ---------------------------------------------------------------- the cached loss (one step, its own process)

CACHED_STEP = """
import json, os, sys, time
import torch
import pyarrow.parquet as pq
from pipeline.models import resolve_model
from pipeline import cpu_linear
from pipeline.models import load_encoder  # noqa: E402
from pipeline.config import TrainConfig
from pipeline.train import backward_step, triplet_encoder
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(0)
tokenizer, model = load_encoder(resolve_model(a["encoder"], a["cache_dir"]), freeze_embeddings=True)
cpu_linear.accelerate(model)  # as the stage's train_loop does
encoder = triplet_encoder(model, "mean").train()
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
cfg = TrainConfig(prefix=a["prefix"], temperature=a["temperature"], gather_across_workers=True,
                  batch_size=a["batch_size"], mini_batch_size=a["mini_batch_size"])
batch = pq.read_table(a["path"]).slice(0, a["batch_size"]).to_pydict()
import threading, psutil
rss, peak, stepping = psutil.Process().memory_info().rss, [0], [True]
def watch():  # the step's own peak: the model load's peak would hide it from ru_maxrss
    while stepping[0]:
        peak[0] = max(peak[0], psutil.Process().memory_info().rss)
        time.sleep(0.005)
watcher = threading.Thread(target=watch)
watcher.start()
started = time.perf_counter()
optimizer.zero_grad()
loss = backward_step(encoder, tokenizer, batch, cfg, a["max_length"])
optimizer.step()
seconds = time.perf_counter() - started
stepping[0] = False
watcher.join()
print(json.dumps({"seconds": seconds, "loss": loss.item(), "peak_rss_gb": max(peak[0], rss) / 2**30,
                  "step_rss_gb": (max(peak[0], rss) - rss) / 2**30}))
"""


def run_cached_step(triplets_path: str, batch_size: int, mini_batch_size: int | None, args) -> dict:
    """One step of the stage's backward_step in a fresh process: samples/s and the step's memory."""
    params = {"path": triplets_path, "batch_size": batch_size, "mini_batch_size": mini_batch_size,
              "max_length": args.max_length, "threads": args.threads, "encoder": ENCODER, "cache_dir": CACHE_DIR,
              "prefix": PREFIX, "temperature": TEMPERATURE}
    proc = subprocess.run([sys.executable, "-c", CACHED_STEP, json.dumps(params)], capture_output=True, text=True,
                          check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "batch": batch_size, "mini_batch_size": mini_batch_size, "samples_per_s": batch_size / result["seconds"]}


# ---------------------------------------------------------------- report

def median_result(results: list[Result]) -> Result:
    first = results[0]
    med = lambda field: statistics.median(getattr(r, field) for r in results)  # noqa: E731
    return Result(first.trainer, first.models, first.triplets, first.steps, med("steady_samples_per_s"), med("wall_s"),
                  med("loop_s"), med("ray_start_s"))


def print_table(results: list[Result], st: Result, cached: dict, args) -> None:
    print(f"\nbatch {args.batch_size}, max length {args.max_length}, {args.threads} torch thread(s), 1 epoch, "
          f"median of {args.repeats} run(s); load average before: {args.load_before}, after: {os.getloadavg()[0]:.1f}\n")
    print("| trainer | models | batch | steps per model | steady samples/s | ratio | fixed s per model | Ray start s | step memory GB (peak RSS) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in (st, *results):
        ratio = r.steady_samples_per_s / st.steady_samples_per_s
        ray_start = f"{r.ray_start_s:.1f}" if r.ray_start_s else "-"
        print(f"| {r.trainer} | {r.models} | {args.batch_size} | {r.steps} | {r.steady_samples_per_s:.1f} | "
              f"{ratio:.2f}x vs ST | {r.fixed_per_model_s:.1f} | {ray_start} | - |")
    base = cached[0] if cached else None
    for c in cached:
        mini = c["mini_batch_size"]
        name = "bootembed step, uncached" if mini is None else f"bootembed step, GradCache mini-batch {mini}"
        ratio = f"{c['samples_per_s'] / base['samples_per_s']:.2f}x vs uncached {base['batch']}" if c is not base else "-"
        print(f"| {name} | 1 | {c['batch']} | 1 | {c['samples_per_s']:.1f} | {ratio} | - | - | {c['step_rss_gb']:.2f} ({c['peak_rss_gb']:.2f}) |")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--triplets", type=int, default=256, help="number of triplets (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="triplets per step (default 32)")
    p.add_argument("--max-length", type=int, default=32, help="token limit of each text (default 32)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of both trainers = the stage's train.cpus_per_worker (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="alternating runs of each trainer; medians reported")
    p.add_argument("--models", type=int, nargs="+", default=[1, 3], help="models per stage run (default: 1 and 3)")
    p.add_argument("--cached-batch", type=int, default=512, help="batch of the cached-loss rows (default 512; 0 = skip)")
    p.add_argument("--mini-batch", type=int, default=32, help="train.mini_batch_size of the cached rows (default 32)")
    p.add_argument("--uncached-batch", type=int, default=64,
                   help="batch of the uncached row and of a cached row beside it (default 64: uncached 512 needs ~24 GB, "
                        "8x the 3 GB measured at 64, more than this machine has)")
    p.add_argument("--verbose", action="store_true", help="show Ray worker logs and progress bars")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    args.load_before = f"{os.getloadavg()[0]:.1f}"
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        triplets_path = os.path.join(tmp, "triplets.parquet")
        pq.write_table(build_triplets(args.triplets, strategies=tuple(STRATEGIES)), triplets_path)
        st_path = os.path.join(tmp, "st-triplets.parquet")
        pq.write_table(build_triplets(args.triplets), st_path)
        runs: dict[str, list[Result]] = {"st": [], **{f"bootembed-{m}": [] for m in args.models}}
        for i in range(args.repeats):
            work = os.path.join(tmp, f"run{i}")
            names = list(runs) if i % 2 == 0 else list(runs)[::-1]  # alternate: load drifts over time
            for name in names:
                if name == "st":
                    runs[name].append(run_sentence_transformers(st_path, args.triplets, args, work))
                else:
                    runs[name].append(run_bootembed(triplets_path, args.triplets, int(name.split("-")[1]), args, work))
                r = runs[name][-1]
                print(f"[bench] run {i + 1}: {r.trainer}: {r.steady_samples_per_s:.1f} samples/s, wall {r.wall_s:.1f} s",
                      flush=True)
        cached = []
        if args.cached_batch:
            big_path = os.path.join(tmp, "big.parquet")
            pq.write_table(build_triplets(max(args.cached_batch, args.uncached_batch)), big_path)
            for batch, mini in ((args.uncached_batch, None), (args.uncached_batch, args.mini_batch),
                                (args.cached_batch, args.mini_batch)):
                cached.append(run_cached_step(big_path, batch, mini, args))
                print(f"[bench] batch {batch}, mini-batch {mini}: {cached[-1]}", flush=True)
        print_table([median_result(runs[n]) for n in runs if n != "st"], median_result(runs["st"]), cached, args)


if __name__ == "__main__":
    main()

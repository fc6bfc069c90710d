"""Throughput and latency of `bootembed serve`'s API vs a plain one-process FastAPI server, in one run.

What it measures
    Both servers embed with the bundled all-MiniLM-L6-v2 (normalised vectors) on loopback, with the same
    number of torch threads (--threads, default 1 as `bootembed serve` uses):

    * bootembed: `serve.app.build_app` on a fresh local Ray instance started by this script (Ray Serve
      proxy -> Api ingress -> Encoder replica(s) with @serve.batch dynamic batching), once per
      --replicas value (default 1 and 2 encoder replicas, each with --threads torch threads).
    * baseline: FastAPI + uvicorn + sentence-transformers in one subprocess, encoding each request as it
      comes (a sync endpoint, so uvicorn's thread pool runs requests side by side, unbatched; with
      several requests in flight it can keep both cores busy even with one torch thread per call).

    Ray runs its workers at nice 15; the baseline server runs at the same niceness, so that on a shared
    machine both get the same share of the CPU against other people's jobs.

    For each concurrency level (default 8 and 32 clients), closed-loop asyncio clients (aiohttp) send
    requests of 1-16 texts (random, seeded, every text unique) for a fixed time. A request counts as an
    error if it fails, is not 200, or returns the wrong number / shape / norm of vectors; every 10th
    request's vectors are kept and compared against sentence-transformers run in this process after the
    load (cosine > 0.999 per vector), so a lost, reordered or wrong answer shows up as an error.

    The machine may be shared and the load generator runs on the same 2 cores: compare the ratios in the
    table, not absolute numbers across runs.

Run
    python benchmarks/bench_serve.py [--levels 8 32] [--seconds 12] [--threads 1] [--replicas 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep every Ray listener on loopback

import numpy as np  # noqa: E402

MODEL = "minilm"
WORDS = ("river market morning rain teacher village song harvest road child market light bread water school "
         "letter friend garden night story").split()
SAMPLE_EVERY = 10  # keep every 10th request's vectors for the reference check
RAY_WORKER_NICENESS = 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not become healthy in {seconds}s")


# --- the baseline server (runs in a subprocess: python bench_serve.py --baseline-server PORT PATH THREADS) ---


def run_baseline_server(port: int, path: str, threads: int) -> None:
    import torch
    import uvicorn
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(path, device="cpu")
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    # Sync on purpose: the straightforward way to serve a model with FastAPI (runs in its thread pool).
    @app.post("/v1/embeddings")
    def embeddings(body: dict):
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return {"object": "list", "model": body["model"],
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start_baseline(path: str, threads: int) -> tuple[str, subprocess.Popen]:
    port = free_port()
    # Same niceness as Ray's workers (RAY_worker_niceness, 15 by default): a fair share on a shared machine.
    proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(port), path, str(threads)],
                            preexec_fn=lambda: os.nice(RAY_WORKER_NICENESS))
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    return url, proc


# --- bootembed, on a private local Ray instance ---


def start_bootembed(threads: int) -> str:
    import ray
    from ray import serve

    os.environ["BOOTEMBED_SERVE_THREADS"] = str(threads)  # read by the Encoder replica; local workers inherit it
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def deploy(path: str, replicas: int) -> None:
    """(Re)deploy bootembed's app with `replicas` encoder replicas; everything else at build_app's defaults."""
    from ray import serve

    from serve.app import build_app

    serve.run(build_app({MODEL: path}, num_replicas=replicas), name="bench", route_prefix="/")


def stop_bootembed() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


# --- load generation and checking ---


@dataclass
class Level:
    latencies: list[float] = field(default_factory=list)  # of every request that got an HTTP answer
    # req/s and texts/s count correct answers only; errors are counted apart
    requests: int = 0
    texts: int = 0  # in correct answers
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    samples: list[tuple[list[str], np.ndarray]] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


def make_texts(rng: random.Random, tag: str) -> list[str]:
    """1-16 unique texts of 4-40 words: a mix of short and long inputs, like real traffic."""
    return [f"{tag}-{i} " + " ".join(rng.choices(WORDS, k=rng.randint(4, 40))) for i in range(rng.randint(1, 16))]


def check(answer: dict, texts: list[str]) -> np.ndarray | str:
    """The vectors of a well-formed answer, or what is wrong with it."""
    data = answer.get("data")
    if not isinstance(data, list) or len(data) != len(texts):
        return "wrong count"
    if [d.get("index") for d in data] != list(range(len(texts))):
        return "wrong order"
    vectors = np.asarray([d["embedding"] for d in data], dtype=np.float32)
    if vectors.shape != (len(texts), 384) or not np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3):
        return "wrong shape or norm"
    return vectors


async def client(session, url: str, level: Level, seed: int, stop_at: float) -> None:
    rng = random.Random(seed)
    n = 0
    while time.monotonic() < stop_at:
        texts = make_texts(rng, f"c{seed}r{n}")
        level.requests += 1
        started = time.perf_counter()
        try:
            async with session.post(url + "/v1/embeddings", json={"model": MODEL, "input": texts}) as response:
                answer = await response.json()
                status = response.status
        except Exception as err:  # noqa: BLE001 - any failure is an error of the run, counted by kind
            level.fail(type(err).__name__)
            n += 1
            continue
        level.latencies.append(time.perf_counter() - started)
        result = check(answer, texts) if status == 200 else f"HTTP {status}"
        if isinstance(result, str):
            level.fail(result)
        else:
            level.texts += len(texts)
            if n % SAMPLE_EVERY == 0:
                level.samples.append((texts, result))
        n += 1


async def drive(url: str, clients: int, seconds: float, seed: int) -> Level:
    import aiohttp

    level = Level()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        stop_at = time.monotonic() + seconds
        started = time.monotonic()
        await asyncio.gather(*(client(session, url, level, seed * 1000 + c, stop_at) for c in range(clients)))
        level.seconds = time.monotonic() - started  # includes finishing the requests in flight at stop_at
    return level


def verify_samples(level: Level, reference) -> None:
    """Compare the kept vectors with sentence-transformers in this process; a mismatch is an error."""
    for texts, got in level.samples:
        expected = reference.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        if not np.all(np.sum(got * expected, axis=1) > 0.999):
            level.fail("vectors differ from reference")


def measure(name: str, url: str, levels: list[int], seconds: float) -> dict[int, Level]:
    asyncio.run(drive(url, 4, 2, seed=999))  # warm-up: first-request costs are not throughput
    results = {}
    for clients in levels:
        results[clients] = asyncio.run(drive(url, clients, seconds, seed=clients))
        r = results[clients]
        print(f"  {name:9s} {clients:3d} clients: {(r.requests - r.errors) / r.seconds:7.1f} req/s, {r.errors} errors", flush=True)
    return results


# --- report ---


def row(name: str, clients: int, level: Level, base: Level | None) -> str:
    req_s, texts_s = (level.requests - level.errors) / level.seconds, level.texts / level.seconds
    p50, p99 = (np.percentile(level.latencies, [50, 99]) * 1000) if level.latencies else (float("nan"),) * 2
    cells = [name, str(clients), f"{req_s:.1f}", f"{texts_s:.0f}", f"{p50:.0f}", f"{p99:.0f}",
             f"{level.errors} / {level.requests}"]
    if base is None:
        cells += ["1.00x", "1.00x", "1.00x"]
    else:
        b_req, b_texts = (base.requests - base.errors) / base.seconds, base.texts / base.seconds
        b_p99 = np.percentile(base.latencies, 99) * 1000
        cells += [f"{req_s / b_req:.2f}x", f"{texts_s / b_texts:.2f}x", f"{p99 / b_p99:.2f}x"]
    return "| " + " | ".join(cells) + " |"


def table(baseline: dict[int, Level], bootembed: dict[int, dict[int, Level]]) -> str:
    lines = ["| server | clients | req/s | texts/s | p50 ms | p99 ms | errors / requests | req/s vs base | texts/s vs base | p99 vs base |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for clients in baseline:
        lines.append(row("baseline", clients, baseline[clients], None))
        for replicas, results in bootembed.items():
            lines.append(row(f"bootembed, {replicas} replica(s)", clients, results[clients], baseline[clients]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[8, 32], help="concurrent clients per level")
    parser.add_argument("--seconds", type=float, default=12, help="load time per level and server")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server's model")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="bootembed encoder replicas to try")
    parser.add_argument("--cache-dir", default="~/.cache/bootembed")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from pipeline.models import resolve_model

    torch.set_num_threads(1)
    path = resolve_model("bundled:all-minilm-l6-v2", os.path.expanduser(args.cache_dir))
    started = time.monotonic()

    print(f"baseline (FastAPI + uvicorn, one process, {args.threads} torch thread(s)) ...", flush=True)
    url, proc = start_baseline(path, args.threads)
    try:
        baseline = measure("baseline", url, args.levels, args.seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    bootembed: dict[int, dict[int, Level]] = {}
    url = start_bootembed(args.threads)
    try:
        for replicas in args.replicas:
            print(f"bootembed (Ray Serve, {replicas} encoder replica(s), {args.threads} torch thread(s) each) ...", flush=True)
            t0 = time.monotonic()
            deploy(path, replicas)
            print(f"  deployed in {time.monotonic() - t0:.1f}s", flush=True)
            bootembed[replicas] = measure("bootembed", url, args.levels, args.seconds)
    finally:
        stop_bootembed()

    reference = SentenceTransformer(path, device="cpu")
    checked = 0
    for level in [*baseline.values(), *(lv for r in bootembed.values() for lv in r.values())]:
        verify_samples(level, reference)
        checked += sum(len(t) for t, _ in level.samples)
    print(f"\nAll-MiniLM-L6-v2, {args.seconds:.0f}s per level, requests of 1-16 texts, {os.cpu_count()} cores; "
          f"{checked} sampled vectors compared with the reference; total {time.monotonic() - started:.0f}s\n")
    print(table(baseline, bootembed))
    for name, results in (("baseline", baseline), *((f"bootembed {r} replica(s)", b) for r, b in bootembed.items())):
        for clients, level in results.items():
            if level.error_kinds:
                print(f"{name} {clients} clients errors: {level.error_kinds}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--baseline-server":
        run_baseline_server(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        main()

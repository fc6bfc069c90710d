"""Throughput, latency and CPU cost of `bootembed serve`'s API vs other servers of the same model, in one run.

What it measures
    Every server embeds with the bundled all-MiniLM-L6-v2 (normalised vectors) on loopback:

    * baseline: FastAPI + uvicorn + sentence-transformers in one subprocess that this script writes, encoding each
      request as it comes (a sync endpoint, so uvicorn's thread pool runs requests side by side, unbatched, each
      with one torch thread: its best setting on 2 cores).
    * bootembed: `serve.app.build_app` at AppArgs' defaults (or --app-args) on a private local Ray instance: Ray
      Serve proxy -> Api ingress -> one Encoder replica batching requests, in fp32 torch.
    * bootembed-<backend>-<quantize> for each of --variants (default onnx-int8, openvino-int8, torch-int8): the same
      app with `backend` / `quantize` set (exports built before its turn starts, so start-up is not measured).
    * infinity (with --infinity PATH, the `infinity_emb` command of a separate venv): Infinity's own server on the
      same folder, torch engine on CPU. If it cannot start, the reason is printed and the run goes on without it.

    Ray runs its workers at nice 15; the other servers run at the same niceness, so that on a shared machine all
    get the same share of the CPU against other people's jobs.

    Workloads: "1-16" (every request 1-16 texts of 4-40 words) and "mixed" (70% single texts, 25% 2-32 texts, 5%
    bulk requests of 64-128), each at every --levels number of closed-loop asyncio clients (aiohttp), for --seconds.
    Every text is unique. A request counts as an error if it fails, is not 200, or returns the wrong number / shape
    / norm of vectors; every 10th request's vectors are compared with sentence-transformers in this process after
    the load (cosine > 0.999 per vector for fp32 servers, > 0.9 for int8 ones, whose smallest cosine is printed), so
    a lost, reordered or wrong answer shows up as an error.

    Servers take turns, round after round (--rounds, the order reversed every other round), each started for its
    turn and stopped after it, so that drift in a shared machine's load hits all of them alike; results add up
    over rounds. "CPU ms/text" is the CPU time of every process the server consists of (for bootembed the whole
    Ray instance: GCS, raylet, controller, proxy, replicas) per text answered: unlike texts/s it hardly depends on
    how much of the machine other jobs left free, so it is the column to compare across runs. Ratios are given
    against the baseline and against bootembed's fp32 torch path, both measured in the same run.

Run
    python benchmarks/bench_serve.py [--levels 8 32 128] [--seconds 10] [--rounds 1]
        [--infinity .venv-infinity/bin/infinity_emb] [--app-args '{"concurrent_batches": 1}']
        [--variants onnx-int8 openvino-int8 torch-int8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
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
REQUEST_TIMEOUT_S = 180  # 128 clients on a busy 2-core machine wait tens of seconds: slow, not failed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(health_url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(health_url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{health_url} did not answer in {seconds}s")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and their children so far (gone processes count 0)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            procs = [psutil.Process(pid)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            continue
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    return total


# --- the servers: each one starts, says which processes are its own and what URL serves it, and stops ---


class Server:
    name: str
    url: str

    def start(self) -> None: ...
    def pids(self) -> list[int]: ...
    def stop(self) -> None: ...


def run_baseline_server(port: int, path: str) -> None:
    """The baseline, as its subprocess runs it: python bench_serve.py --baseline-server PORT PATH."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)  # one per request: the thread pool runs requests side by side on both cores
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


class Subprocess(Server):
    """A server that is one command line (and the processes it starts), at Ray's workers' niceness."""

    def __init__(self, name: str, command: list[str], port: int, health_path: str, env: dict[str, str] | None = None):
        self.name, self.command, self.env = name, command, {**os.environ, **(env or {})}
        self.url = f"http://127.0.0.1:{port}"
        self.health_url = self.url + health_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, preexec_fn=lambda: os.nice(RAY_WORKER_NICENESS), env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_healthy(self.health_url, self.proc)
        except RuntimeError as err:
            self.stop()
            raise RuntimeError(f"{err}; its last words: {self.stderr_tail()}") from None

    def stderr_tail(self) -> str:
        return (self.proc.stderr.read() or "")[-800:].strip() if self.proc and self.proc.poll() is not None else ""

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def baseline(path: str) -> Subprocess:
    port = free_port()
    return Subprocess("baseline", [sys.executable, __file__, "--baseline-server", str(port), path], port, "/healthz")


def infinity(command: str, path: str) -> Subprocess:
    port = free_port()
    # Same model folder, torch on CPU, served under our model name at /v1 (OpenAI's path); other settings its defaults.
    cli = [command, "v2", "--model-id", path, "--served-model-name", MODEL, "--engine", "torch", "--device", "cpu",
           "--port", str(port), "--host", "127.0.0.1", "--url-prefix", "/v1", "--no-model-warmup"]
    return Subprocess("infinity", cli, port, "/health", env={"DO_NOT_TRACK": "1"})  # no usage statistics sent


class Bootembed(Server):
    """bootembed's app on a private local Ray instance, started for its turn and shut down after it."""

    def __init__(self, path: str, app_args: dict, name: str = "bootembed"):
        self.path, self.app_args, self.name = path, app_args, name

    def start(self) -> None:
        import ray
        from ray import serve

        from serve.app import AppArgs, build_app

        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(AppArgs(models={MODEL: self.path}, **self.app_args)), name="bench", route_prefix="/")
        self.url = f"http://127.0.0.1:{port}"

    def pids(self) -> list[int]:
        import psutil

        return [p.pid for p in psutil.Process().children()]  # gcs_server, raylet (with every worker under it), ...

    def stop(self) -> None:
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
    cpu: float = 0.0  # server-side CPU seconds

    def fail(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def add(self, other: Level) -> None:
        """Fold in another round of the same measurement."""
        self.latencies += other.latencies
        self.requests, self.texts, self.errors = self.requests + other.requests, self.texts + other.texts, self.errors + other.errors
        for kind, n in other.error_kinds.items():
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + n
        self.samples += other.samples
        self.seconds, self.cpu = self.seconds + other.seconds, self.cpu + other.cpu


def request_size(rng: random.Random, workload: str) -> int:
    if workload == "1-16":
        return rng.randint(1, 16)
    draw = rng.random()  # "mixed": interactive queries among bulk jobs
    return 1 if draw < 0.70 else rng.randint(2, 32) if draw < 0.95 else rng.randint(64, 128)


def make_texts(rng: random.Random, tag: str, workload: str) -> list[str]:
    """Unique texts of 4-40 words: a mix of short and long inputs, like real traffic."""
    return [f"{tag}-{i} " + " ".join(rng.choices(WORDS, k=rng.randint(4, 40))) for i in range(request_size(rng, workload))]


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


async def client(session, url: str, level: Level, seed: int, stop_at: float, workload: str) -> None:
    rng = random.Random(seed)
    n = 0
    while time.monotonic() < stop_at:
        texts = make_texts(rng, f"c{seed}r{n}", workload)
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


async def drive(url: str, clients: int, seconds: float, seed: int, workload: str) -> Level:
    import aiohttp

    level = Level()
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        stop_at = time.monotonic() + seconds
        started = time.monotonic()
        await asyncio.gather(*(client(session, url, level, seed * 1000 + c, stop_at, workload) for c in range(clients)))
        level.seconds = time.monotonic() - started  # includes finishing the requests in flight at stop_at
    return level


def measure(server: Server, workloads: list[str], levels: list[int], seconds: float, seed: int
            ) -> dict[tuple[str, int], Level]:
    asyncio.run(drive(server.url, 4, 2, seed=999, workload="1-16"))  # warm-up: first-request costs are not throughput
    pids = server.pids()
    results = {}
    for workload in workloads:
        for clients in levels:
            cpu = cpu_seconds(pids)
            level = asyncio.run(drive(server.url, clients, seconds, seed=seed * 10_000 + clients, workload=workload))
            level.cpu = cpu_seconds(pids) - cpu
            results[(workload, clients)] = level
            print(f"  {server.name:9s} {workload:5s} {clients:3d} clients: {level.texts / level.seconds:6.1f} texts/s, "
                  f"{1000 * level.cpu / max(level.texts, 1):5.1f} CPU ms/text, {level.errors} errors", flush=True)
    return results


def verify_samples(level: Level, reference, least: float) -> float:
    """Compare the kept vectors with sentence-transformers in this process (a cosine below `least` is an error);
    the smallest cosine seen."""
    smallest = 1.0
    for texts, got in level.samples:
        expected = reference.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        cosines = np.sum(got * expected, axis=1)
        smallest = min(smallest, float(cosines.min()))
        if not np.all(cosines > least):
            level.fail("vectors differ from reference")
    return smallest


# --- report ---


def ratios(level: Level, base: Level | None) -> list[str]:
    """texts/s and p99 of `level` against `base` (blank when the base did not run)."""
    if base is None or not base.latencies or not level.latencies:
        return ["", ""]
    texts_s, base_texts_s = level.texts / level.seconds, base.texts / base.seconds
    return [f"{texts_s / base_texts_s:.2f}x",
            f"{np.percentile(level.latencies, 99) / np.percentile(base.latencies, 99):.2f}x"]


def row(name: str, workload: str, clients: int, level: Level, base: Level | None, fp32: Level | None) -> str:
    texts_s = level.texts / level.seconds
    p50, p99 = (np.percentile(level.latencies, [50, 99]) * 1000) if level.latencies else (float("nan"),) * 2
    cells = [name, workload, str(clients), f"{(level.requests - level.errors) / level.seconds:.1f}", f"{texts_s:.0f}",
             f"{p50:.0f}", f"{p99:.0f}", f"{1000 * level.cpu / max(level.texts, 1):.1f}", f"{level.errors} / {level.requests}",
             *ratios(level, base), *ratios(level, fp32)]
    return "| " + " | ".join(cells) + " |"


def table(results: dict[str, dict[tuple[str, int], Level]]) -> str:
    lines = ["| server | workload | clients | req/s | texts/s | p50 ms | p99 ms | CPU ms/text | errors / requests "
             "| texts/s vs baseline | p99 vs baseline | texts/s vs bootembed fp32 | p99 vs bootembed fp32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys(key for by_key in results.values() for key in by_key))
    for key in keys:
        lines += [row(name, *key, by_key[key], results.get("baseline", {}).get(key), results.get("bootembed", {}).get(key))
                  for name, by_key in results.items() if key in by_key]
    return "\n".join(lines)


def prepare_export(path: str, backend: str, quantize: str, app_args: dict) -> None:
    """Build (or check) a variant's export here, once, so that no server's turn includes building it."""
    from serve._backends import load
    from serve.args import AppArgs

    if backend != "torch":
        load(path, backend, quantize, "cpu", threads=1, streams=1,
             export_dir=app_args.get("export_dir", AppArgs.model_fields["export_dir"].default))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[8, 32, 128], help="concurrent clients per level")
    parser.add_argument("--workloads", nargs="+", default=["1-16", "mixed"], choices=["1-16", "mixed"])
    parser.add_argument("--seconds", type=float, default=10, help="load time per level and server")
    parser.add_argument("--rounds", type=int, default=1, help="turns each server takes (results add up)")
    parser.add_argument("--infinity", help="the infinity_emb command of a venv where infinity-emb is installed")
    parser.add_argument("--app-args", default="{}", help="AppArgs fields (JSON) that bootembed overrides")
    parser.add_argument("--variants", nargs="*", default=["onnx-int8", "openvino-int8", "torch-int8"],
                        help="bootembed backends beside fp32 torch, as <backend>-<quantize>")
    parser.add_argument("--cache-dir", default="~/.cache/bootembed")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from pipeline.models import resolve_model

    torch.set_num_threads(1)
    path = resolve_model("bundled:all-minilm-l6-v2", os.path.expanduser(args.cache_dir))
    started, load_before = time.monotonic(), os.getloadavg()[0]
    app_args = json.loads(args.app_args)
    servers: list[Server] = [baseline(path), Bootembed(path, {**app_args, "backend": "torch", "quantize": "none"})]
    for variant in args.variants:
        backend, quantize = variant.split("-")
        prepare_export(path, backend, quantize, app_args)
        servers.append(Bootembed(path, {**app_args, "backend": backend, "quantize": quantize}, f"bootembed-{variant}"))
    if args.infinity:
        if shutil.which(args.infinity):
            servers.append(infinity(args.infinity, path))
        else:
            print(f"infinity: {args.infinity} is not an executable; measured without it")

    results: dict[str, dict[tuple[str, int], Level]] = {}
    for round_ in range(args.rounds):
        for server in servers if round_ % 2 == 0 else servers[::-1]:
            if round_ > 0 and server.name not in results:
                continue  # it could not start in the first round
            print(f"round {round_ + 1}: {server.name} ...", flush=True)
            try:
                server.start()
            except Exception as err:  # noqa: BLE001 - a server that cannot start is reported, the others measured
                print(f"  {server.name} could not start: {type(err).__name__}: {err}", flush=True)
                continue
            try:
                for key, level in measure(server, args.workloads, args.levels, args.seconds, seed=round_).items():
                    results.setdefault(server.name, {}).setdefault(key, Level()).add(level)
            finally:
                server.stop()

    reference = SentenceTransformer(path, device="cpu")
    checked, smallest = 0, {}
    for name, by_key in results.items():
        least = 0.9 if name.endswith("int8") else 0.999
        for level in by_key.values():
            smallest[name] = min(smallest.get(name, 1.0), verify_samples(level, reference, least))
            checked += sum(len(t) for t, _ in level.samples)
    print(f"\nAll-MiniLM-L6-v2, {args.rounds} round(s) of {args.seconds:.0f}s per level and server, {os.cpu_count()} cores, "
          f"load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after; {checked} sampled vectors "
          f"compared with the reference; total {time.monotonic() - started:.0f}s\n")
    print(table(results))
    print("\nsmallest cosine of a sampled vector to sentence-transformers fp32: "
          + ", ".join(f"{name} {value:.4f}" for name, value in smallest.items()))
    for name, by_key in results.items():
        for (workload, clients), level in by_key.items():
            if level.error_kinds:
                print(f"{name} {workload} {clients} clients errors: {level.error_kinds}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--baseline-server":
        run_baseline_server(int(sys.argv[2]), sys.argv[3])
    else:
        main()

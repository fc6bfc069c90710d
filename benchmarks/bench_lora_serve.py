"""Many LoRA adapters on one replica vs one merged model: throughput, p99, adapter load time and replica memory.

What it measures
    Encoder: the bundled all-MiniLM-L6-v2 (6 layers, 384 wide, 22M parameters; the multilingual e5-small would be
    the real base, MiniLM keeps a 2-core run short). 1,000 adapters are registered (LoRA rank 8 on every Linear
    layer, as train.lora's default; random weights: speed does not depend on them), each its own folder in peft's
    format (1.2 MB) with bootembed's record of its base. One Serve app on a private local Ray instance on loopback
    holds two deployments of one replica each: `Adapters` (the base once, adapters loaded on first use, at most
    --max-adapters kept) and `Encoder-merged` (adapter 0 merged into MiniLM by peft: what serving one language's
    model costs today).

    Traffic: --clients closed-loop aiohttp clients, each request --texts unique texts of 4-20 words, for --seconds
    per turn; against the adapters each request names one of --in-use adapters at random; against the merged model
    every request names it. Turns alternate (merged, adapters, adapters, merged, ...: --rounds) so drift in a shared
    machine's load hits both alike; results add up over turns. Before the timed turns every adapter in use is
    loaded once (that is when load times are taken) and 5 adapters' vectors are checked against their peft-merged
    models (cosine >= 0.9999) so the speed is that of right answers. A request is an error if it fails, is not 200,
    or returns the wrong number of vectors.

    Columns: texts/s and p50 / p99 latency per request; ratios against the merged model measured in the same run;
    adapter load time (median and max of the in-use adapters' first loads, in the replica: reading the folder,
    checking its base, moving the weights); replica memory is each deployment's replica process RSS after the run.

Run
    python benchmarks/bench_lora_serve.py [--adapters 1000] [--in-use 100] [--clients 32] [--seconds 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

WORDS = ("river", "mountain", "school", "market", "doctor", "rain", "music", "farm", "bread", "letter", "train",
         "garden", "church", "forest", "judge", "child", "water", "village", "road", "teacher", "book", "night",
         "morning", "city", "house", "family", "friend", "language", "story", "field")


def make_adapters(base: str, root: Path, count: int, rank: int) -> dict[str, str]:
    """`count` adapter folders on `base` (a sentence-transformers folder): peft's config and key names from one real
    peft adapter, random weights written directly (fast), each with bootembed's record of its base."""
    import torch
    from peft import get_peft_model
    from safetensors.torch import load_file, save_file

    from pipeline import encoder_lora
    from pipeline.config import EncoderLoraConfig
    from pipeline.models import load_encoder

    _, model = load_encoder(base, freeze_embeddings=False)
    base_sha256 = encoder_lora.weights_sha256(model)  # before peft wraps the model's layers in place
    lora = EncoderLoraConfig(rank=rank, alpha=2 * rank, dropout=0.0, target_modules="all-linear")
    template = root / "template"
    get_peft_model(model, encoder_lora.peft_config(lora)).save_pretrained(template)
    shapes = {k: v.shape for k, v in load_file(template / encoder_lora.ADAPTER_WEIGHTS).items()}
    config = (template / encoder_lora.ADAPTER_CONFIG).read_text()
    meta = {"base": base, "base_sha256": base_sha256, "lora": lora.model_dump(mode="json")}
    generator = torch.Generator().manual_seed(0)
    folders = {}
    for i in range(count):
        folder = root / f"a{i:04d}"
        folder.mkdir()
        tensors = {k: torch.randn(shape, generator=generator) * (0.05 if "lora_B" in k else 0.1) for k, shape in shapes.items()}
        save_file(tensors, folder / encoder_lora.ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (folder / encoder_lora.ADAPTER_CONFIG).write_text(config)
        (folder / encoder_lora.META).write_text(json.dumps({**meta, "id": f"a{i:04d}"}))
        folders[f"bench/a{i:04d}"] = str(folder)
    return folders


def merged(base: str, adapter: str, path: Path) -> str:
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(base, device="cpu")
    model[0].auto_model = PeftModel.from_pretrained(model[0].auto_model, adapter).merge_and_unload()
    model.save(str(path))
    return str(path)


class Turn:
    def __init__(self):
        self.latencies: list[float] = []
        self.texts, self.errors, self.seconds = 0, 0, 0.0

    def add(self, other: Turn) -> None:
        self.latencies += other.latencies
        self.texts, self.errors, self.seconds = self.texts + other.texts, self.errors + other.errors, self.seconds + other.seconds


async def drive(url: str, names: list[str], clients: int, texts_per_request: int, seconds: float, seed: int) -> Turn:
    import aiohttp

    turn, stop_at = Turn(), time.perf_counter() + seconds

    async def client(k: int, session) -> None:
        rng = random.Random(seed * 1000 + k)
        n = 0
        while time.perf_counter() < stop_at:
            texts = [f"{k}-{n}-{j} " + " ".join(rng.choices(WORDS, k=rng.randint(4, 20))) for j in range(texts_per_request)]
            n += 1
            started = time.perf_counter()
            try:
                async with session.post(url, json={"model": rng.choice(names), "input": texts}) as response:
                    body = await response.json()
                    ok = response.status == 200 and len(body["data"]) == len(texts)
            except Exception:  # noqa: BLE001 - any failure is an error of this request
                ok = False
            if ok:
                turn.latencies.append(time.perf_counter() - started)
                turn.texts += len(texts)
            else:
                turn.errors += 1

    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(client(k, session) for k in range(clients)))
    turn.seconds = time.perf_counter() - started
    return turn


def replica_rss_mb(app: str) -> dict[str, float]:
    """{deployment: RSS in MB of its replica process} (each deployment has one replica here)."""
    import psutil
    from ray import serve

    return {d: psutil.Process(serve.get_deployment_handle(d, app_name=app).stats.remote().result(timeout_s=60)["pid"])
            .memory_info().rss / 2**20 for d in ("Adapters", "Encoder-merged")}


def post(url: str, body: dict) -> dict:
    """The JSON answer of one request; a non-200 answer stops the benchmark with its error body."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        raise SystemExit(f"{body['model']}: HTTP {err.code}: {err.read().decode()[-700:]}") from None


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--in-use", type=int, default=100)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--texts", type=int, default=4, help="texts per request")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-adapters", type=int, default=128, help="max_adapters_per_replica")
    args = parser.parse_args()

    import ray
    from ray import serve
    from sentence_transformers import SentenceTransformer

    from pipeline.models import resolve_model
    from serve.app import ADAPTERS, AppArgs, build_app

    base = resolve_model("bundled:all-minilm-l6-v2", os.path.expanduser("~/.cache/bootembed"))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        started = time.perf_counter()
        adapters = make_adapters(base, Path(tmp), args.adapters, args.rank)
        size = sum(f.stat().st_size for f in Path(next(iter(adapters.values()))).iterdir()) / 2**20
        print(f"{args.adapters} adapters written in {time.perf_counter() - started:.1f} s ({size:.2f} MB each)", flush=True)
        in_use = list(adapters)[: args.in_use]
        merged_path = merged(base, adapters[in_use[0]], Path(tmp) / "merged")

        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
        port = 8000 + random.randint(100, 900)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            started = time.perf_counter()
            serve.run(build_app(AppArgs(models={**adapters, "merged": merged_path},
                                        max_adapters_per_replica=args.max_adapters)), name="bench", route_prefix="/")
            print(f"app ready in {time.perf_counter() - started:.1f} s (1,000 adapter folders checked at start)", flush=True)
            url = f"http://127.0.0.1:{port}/v1/embeddings"
            handle = serve.get_deployment_handle(ADAPTERS, app_name="bench")

            # Warm-up: every adapter in use loaded once (load times), and 5 checked against peft's merged model
            for name in in_use:
                post(url, {"model": name, "input": ["warm up"]})
            checks = ["The river is near the school.", "market day in the village"]
            for name in in_use[:5]:
                reference = SentenceTransformer(merged(base, adapters[name], Path(tmp) / f"check-{name[-4:]}"), device="cpu")
                answer = post(url, {"model": name, "input": checks})
                got = np.array([d["embedding"] for d in answer["data"]])
                cosine = np.sum(got * reference.encode(checks, normalize_embeddings=True), axis=1).min()
                assert cosine >= 0.9999, (name, cosine)
            stats = handle.stats.remote().result(timeout_s=60)
            load_ms = [1000 * s for s in stats["load_seconds"].values()]

            results = {"merged": Turn(), "adapters": Turn()}
            for r in range(args.rounds):
                for kind in (("merged", "adapters") if r % 2 == 0 else ("adapters", "merged")):
                    names = ["merged"] if kind == "merged" else in_use
                    results[kind].add(asyncio.run(drive(url, names, args.clients, args.texts, args.seconds, seed=r + 1)))
                    print(f"round {r + 1} {kind}: {results[kind].texts} texts so far", flush=True)
            rss = replica_rss_mb("bench")
            reloads = sum(n - 1 for n in handle.stats.remote().result(timeout_s=60)["loads"].values())
        finally:
            serve.shutdown()
            ray.shutdown()
    load_after = os.getloadavg()

    tps = {k: t.texts / t.seconds for k, t in results.items()}
    p99 = {k: 1000 * percentile(t.latencies, 99) for k, t in results.items()}
    print()
    print(f"MiniLM-L6 base, LoRA rank {args.rank} all-linear; {args.adapters} adapters registered, {args.in_use} in use; "
          f"{args.clients} clients x {args.texts} texts/request; {args.rounds} rounds x {args.seconds:.0f} s per server; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; {reloads} adapter reloads during the "
          "timed turns")
    print("| served | texts/s | p50 ms | p99 ms | errors / requests | texts/s vs merged | p99 vs merged | adapter load ms "
          "(median / max) | replica RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, label in (("merged", "one merged model"), ("adapters", f"{args.in_use} adapters of {args.adapters}")):
        t = results[kind]
        load = f"{statistics.median(load_ms):.1f} / {max(load_ms):.1f}" if kind == "adapters" and load_ms else ""
        deployment = "Encoder-merged" if kind == "merged" else "Adapters"
        print(f"| {label} | {tps[kind]:.0f} | {1000 * percentile(t.latencies, 50):.0f} | {p99[kind]:.0f} | "
              f"{t.errors} / {t.errors + len(t.latencies)} | {tps[kind] / tps['merged']:.2f}x | {p99[kind] / p99['merged']:.2f}x "
              f"| {load} | {rss.get(deployment, float('nan')):.0f} |")


if __name__ == "__main__":
    main()

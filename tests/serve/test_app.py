"""The Ray Serve application, started for real on loopback once per module.

Two models (the tiny test encoder and the bundled MiniLM), checked against sentence-transformers
run in this process, through the official `openai` client and plain HTTP (urllib).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import METRICS_PORT

pytestmark = pytest.mark.timeout(300)

APP = "bootembed-test"
MAX_INPUTS = 8  # small, so the 413 case is cheap
TEXTS = ["Ẹ kú àárọ̀, báwo ni?", "Kumno phi long?", "The cat sat on the mat.", "a",
         "A much longer sentence about the weather in Lagos, which was hot and humid all week."]


@pytest.fixture(scope="module")
def server(serve_url, tiny_encoder, minilm_path):
    """{"url": ..., "models": {name: path}} of the running application; deleted after the module."""
    from ray import serve

    from serve.app import API_KEY_ENV, AppArgs, build_app

    models = {"tiny": tiny_encoder, "minilm": minilm_path}
    os.environ.pop(API_KEY_ENV, None)  # a developer's own key would otherwise be required here
    try:
        # A longer batch wait than the default makes concurrent requests share batches reliably.
        serve.run(build_app(AppArgs(models=models, batch_wait_timeout_s=0.05, max_inputs=MAX_INPUTS)), name=APP,
                  route_prefix="/")
        yield {"url": serve_url, "models": models}
    finally:
        serve.delete(APP)


@pytest.fixture(scope="module")
def st_models(server):
    """{name: SentenceTransformer} of the served models, loaded in this process."""
    from sentence_transformers import SentenceTransformer

    return {name: SentenceTransformer(path, device="cpu") for name, path in server["models"].items()}


@pytest.fixture(scope="module")
def reference(st_models):
    """reference(model, texts) -> the normalised vectors sentence-transformers gives in this process."""
    return lambda model, texts: st_models[model].encode(texts, normalize_embeddings=True, convert_to_numpy=True)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server['url']}/v1", api_key="unused", max_retries=0, timeout=60)


def http(server, method: str, path: str, body: object = None, raw: bytes | None = None,
         auth: str | None = None) -> tuple[int, dict]:
    """(status, JSON body) of one plain-HTTP request; 4xx/5xx answers are returned, not raised.

    `auth` is the Authorization header's value, if any.
    """
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth is not None else {})}
    request = urllib.request.Request(server["url"] + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def check_embeddings(answer: dict, model: str, texts: list[str], reference) -> None:
    """An OpenAI embeddings response (as a dict) carries the reference vectors of `texts`, in order."""
    assert answer["object"] == "list"
    assert answer["model"] == model
    assert [d["index"] for d in answer["data"]] == list(range(len(texts)))
    assert all(d["object"] == "embedding" for d in answer["data"])
    got = np.array([d["embedding"] for d in answer["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, reference(model, texts), atol=1e-5, rtol=0)
    usage = answer["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] >= 3 * len(texts)  # [CLS] word [SEP] at least


def embed_ok(server, reference, model: str = "tiny", texts: list[str] | None = None) -> None:
    texts = texts or TEXTS[:2]
    status, answer = http(server, "POST", "/v1/embeddings", {"model": model, "input": texts})
    assert status == 200, answer
    check_embeddings(answer, model, texts, reference)


# --- successful requests -------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny", "minilm"])
@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_openai_client_gets_reference_embeddings(client, reference, model, encoding_format):
    # Without encoding_format the client asks for base64 and decodes it itself.
    extra = {} if encoding_format is None else {"encoding_format": encoding_format}
    response = client.embeddings.create(model=model, input=TEXTS, **extra)
    answer = response.model_dump(warnings=False)  # base64 strings sit in a field typed list[float]
    if encoding_format == "base64":  # returned as given: little-endian float32 bytes
        import base64

        for d in answer["data"]:
            assert isinstance(d["embedding"], str)
            d["embedding"] = np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").tolist()
    check_embeddings(answer, model, TEXTS, reference)


def test_openai_client_single_string(client, reference):
    response = client.embeddings.create(model="minilm", input="Kumno phi long?")
    check_embeddings(response.model_dump(), "minilm", ["Kumno phi long?"], reference)
    assert len(response.data[0].embedding) == 384


@pytest.mark.parametrize("model", ["tiny", "minilm"])
def test_plain_http_gets_reference_embeddings(server, reference, model):
    status, answer = http(server, "POST", "/v1/embeddings", {"model": model, "input": TEXTS})
    assert status == 200, answer
    check_embeddings(answer, model, TEXTS, reference)
    assert len(answer["data"][0]["embedding"]) == {"tiny": 32, "minilm": 384}[model]

    status, answer = http(server, "POST", "/v1/embeddings", {"model": model, "input": TEXTS[2]})
    assert status == 200, answer
    check_embeddings(answer, model, [TEXTS[2]], reference)


def test_max_inputs_is_accepted(server, reference):
    embed_ok(server, reference, "tiny", [f"sentence number {i}" for i in range(MAX_INPUTS)])


def test_models_and_health(server, client):
    status, answer = http(server, "GET", "/v1/models")
    assert status == 200
    assert answer["object"] == "list"
    assert sorted(m["id"] for m in answer["data"]) == ["minilm", "tiny"]
    assert sorted(m.id for m in client.models.list()) == ["minilm", "tiny"]

    status, answer = http(server, "GET", "/healthz")
    assert status == 200
    assert answer["status"] == "ok"
    assert sorted(answer["models"]) == ["minilm", "tiny"]


# --- errors: 4xx in OpenAI's shape, and the server keeps serving -----------------------------------

ERRORS = {
    # id: (body or raw bytes, status, param, words the message must contain)
    "unknown model": ({"model": "nope", "input": ["hi"]}, 404, "model", ["'nope'", "minilm", "tiny"]),
    "missing model": ({"input": ["hi"]}, 400, "model", ["required"]),
    "model not a string": ({"model": 7, "input": ["hi"]}, 400, "model", ["string"]),
    "missing input": ({"model": "tiny"}, 400, "input", ["required"]),
    "empty input list": ({"model": "tiny", "input": []}, 400, "input", ["empty"]),
    "empty string input": ({"model": "tiny", "input": ""}, 400, "input", ["empty"]),
    "empty string in list": ({"model": "tiny", "input": ["hi", ""]}, 400, "input", ["empty", "[1]"]),
    "input is a number": ({"model": "tiny", "input": 123}, 400, "input", ["string"]),
    "input mixes types": ({"model": "tiny", "input": ["hi", None]}, 400, "input", ["string"]),
    "input mixes text and token ids": ({"model": "tiny", "input": ["hi", [101, 102]]}, 400, "input",
                                       ["token array", "not a mix"]),
    "token id a float": ({"model": "tiny", "input": [101.0, 102]}, 400, "input", ["list of integers"]),
    "token id a bool": ({"model": "tiny", "input": [[101, True]]}, 400, "input", ["list of integers"]),
    "token id negative": ({"model": "tiny", "input": [[101, 102], [101, -3]]}, 400, "input",
                          ["0 or more", "input[1] has -3"]),
    "token id beyond the vocabulary": ({"model": "tiny", "input": [[101, 102], [101, 99999999, 102]]}, 400, "input",
                                       ["token ids 0 to 30521", "input[1] has 99999999", "own tokenizer"]),
    "empty token array": ({"model": "tiny", "input": [[101, 102], []]}, 400, "input", ["empty token arrays", "[1]"]),
    "body not JSON": (b"model=tiny&input=hi", 400, None, ["JSON"]),
    "body not UTF-8": (b"\xff\xfe\x00{", 400, None, ["JSON"]),
    "body is a JSON list": (["tiny", "hi"], 400, None, ["JSON object"]),
    "too many items": ({"model": "tiny", "input": ["x"] * (MAX_INPUTS + 1)}, 413, "input",
                       [str(MAX_INPUTS + 1), f"at most {MAX_INPUTS}"]),
    "unsupported encoding_format": ({"model": "tiny", "input": ["hi"], "encoding_format": "int8"}, 400,
                                    "encoding_format", ["'int8'"]),
    "dimensions zero": ({"model": "tiny", "input": ["hi"], "dimensions": 0}, 400, "dimensions", ["positive integer", "0"]),
    "dimensions negative": ({"model": "tiny", "input": ["hi"], "dimensions": -4}, 400, "dimensions", ["positive", "-4"]),
    "dimensions a float": ({"model": "tiny", "input": ["hi"], "dimensions": 8.0}, 400, "dimensions", ["integer", "8.0"]),
    "dimensions a string": ({"model": "tiny", "input": ["hi"], "dimensions": "8"}, 400, "dimensions", ["integer", "'8'"]),
    "dimensions a bool": ({"model": "tiny", "input": ["hi"], "dimensions": True}, 400, "dimensions", ["integer", "True"]),
    "dimensions above the model's": ({"model": "tiny", "input": ["hi"], "dimensions": 33}, 400, "dimensions",
                                     ["33", "'tiny' has 32", "1 to 32"]),
    "dimensions above minilm's": ({"model": "minilm", "input": ["hi"], "dimensions": 385}, 400, "dimensions",
                                  ["385", "'minilm' has 384"]),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_error_is_openai_shaped_and_server_keeps_serving(server, reference, case):
    body, status, param, words = ERRORS[case]
    code, answer = (http(server, "POST", "/v1/embeddings", raw=body) if isinstance(body, bytes)
                    else http(server, "POST", "/v1/embeddings", body))
    assert code == status, answer
    assert set(answer) == {"error"}
    err = answer["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    for word in words:
        assert word in err["message"], (word, err["message"])
    embed_ok(server, reference, "tiny")


@pytest.mark.parametrize("method,path,status", [("GET", "/v1/embedding", 404), ("POST", "/v2/embeddings", 404),
                                                 ("GET", "/v1/embeddings", 405), ("DELETE", "/v1/models", 405)])
def test_unknown_route_or_method_is_openai_shaped(server, reference, method, path, status):
    code, answer = http(server, method, path, {"model": "tiny", "input": ["hi"]} if method == "POST" else None)
    assert code == status, answer
    assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}
    assert f"{method} {path}" in answer["error"]["message"] and "POST /v1/embeddings" in answer["error"]["message"]
    embed_ok(server, reference, "tiny")


def test_openai_client_raises_typed_errors(client, server, reference):
    import openai

    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="nope", input=["hi"])
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert "'nope'" in caught.value.message

    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="tiny", input=[])
    assert caught.value.param == "input"
    embed_ok(server, reference, "minilm")


# --- token arrays: the model's own token ids, read as given (as vLLM and TEI read them) --------------


@pytest.mark.parametrize("model", ["tiny", "minilm"])
def test_token_arrays_get_the_vectors_of_their_text(server, st_models, reference, model):
    ids = [st_models[model].tokenizer(t)["input_ids"] for t in TEXTS]  # [CLS] ... [SEP], as the text path reads
    status, answer = http(server, "POST", "/v1/embeddings", {"model": model, "input": ids})
    assert status == 200, answer
    check_embeddings(answer, model, TEXTS, reference)
    assert answer["usage"]["prompt_tokens"] == sum(map(len, ids))

    status, answer = http(server, "POST", "/v1/embeddings", {"model": model, "input": ids[2]})  # one token array
    assert status == 200, answer
    check_embeddings(answer, model, TEXTS[2:3], reference)


def test_openai_client_sends_token_arrays(client, st_models, reference):
    ids = [st_models["minilm"].tokenizer(t)["input_ids"] for t in TEXTS[:3]]
    response = client.embeddings.create(model="minilm", input=ids, encoding_format="float")
    check_embeddings(response.model_dump(), "minilm", TEXTS[:3], reference)


def test_texts_and_token_arrays_in_one_batch(server, st_models, reference):
    """Requests of both kinds, sent together, share batches and each gets its own vectors."""
    tokenizer = st_models["tiny"].tokenizer
    bodies = [{"model": "tiny", "input": [TEXTS[i % 5]] if i % 2 else [tokenizer(TEXTS[i % 5])["input_ids"]]}
              for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda b: http(server, "POST", "/v1/embeddings", b), bodies))
    for i, (status, answer) in enumerate(answers):
        assert status == 200, answer
        check_embeddings(answer, "tiny", [TEXTS[i % 5]], reference)


def test_long_token_array_is_truncated_to_what_the_model_reads(server, st_models):
    limit = st_models["tiny"].max_seq_length
    status, answer = http(server, "POST", "/v1/embeddings", {"model": "tiny", "input": [[1000 + i for i in range(3 * limit)]]})
    assert status == 200, answer
    assert answer["usage"]["prompt_tokens"] == limit


# --- concurrency and batching ----------------------------------------------------------------------


def test_concurrent_requests_get_their_own_vectors(server, reference):
    from ray import serve

    threads, per_thread = 16, 3
    jobs = [(("tiny", "minilm")[(t + r) % 2], [f"thread {t} request {r} item {i}: {TEXTS[(t + r + i) % 5]}"
                                              for i in range(1 + (t + r) % 3)])
            for t in range(threads) for r in range(per_thread)]

    def worker(t: int) -> list[dict]:
        answers = []
        for model, texts in jobs[t * per_thread:(t + 1) * per_thread]:
            status, answer = http(server, "POST", "/v1/embeddings", {"model": model, "input": texts})
            assert status == 200, answer
            answers.append(answer)
        return answers

    with ThreadPoolExecutor(threads) as pool:
        answers = [a for batch in pool.map(worker, range(threads)) for a in batch]
    assert len(answers) == len(jobs)
    for (model, texts), answer in zip(jobs, answers):
        check_embeddings(answer, model, texts, reference)

    # @serve.batch really grouped concurrent requests (counted inside the Encoder replicas).
    stats = {m: serve.get_deployment_handle(f"Encoder-{m}", app_name=APP).stats.remote().result(timeout_s=30)
             for m in ("tiny", "minilm")}
    assert max(s["largest_batch"] for s in stats.values()) > 1, stats


# --- dimensions: truncated and renormalised --------------------------------------------------------


def truncated(vectors: np.ndarray, n: int) -> np.ndarray:
    cut = vectors[:, :n]
    return cut / np.linalg.norm(cut, axis=1, keepdims=True)


@pytest.mark.parametrize("model,n", [("tiny", 8), ("minilm", 64), ("minilm", 1), ("minilm", 384)])
def test_dimensions_truncates_and_renormalises(server, reference, model, n):
    status, answer = http(server, "POST", "/v1/embeddings", {"model": model, "input": TEXTS, "dimensions": n})
    assert status == 200, answer
    got = np.array([d["embedding"] for d in answer["data"]], dtype=np.float32)
    assert got.shape == (len(TEXTS), n)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(got, truncated(reference(model, TEXTS), n), atol=1e-5, rtol=0)
    full = http(server, "POST", "/v1/embeddings", {"model": model, "input": TEXTS})[1]
    assert answer["usage"] == full["usage"]  # the same tokens were read, however many dimensions come back


def test_openai_client_dimensions_base64(client, reference):
    # The client's default encoding (base64) must carry the truncated vectors too.
    response = client.embeddings.create(model="minilm", input=TEXTS[:3], dimensions=16)
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, truncated(reference("minilm", TEXTS[:3]), 16), atol=1e-5, rtol=0)


def test_truncate_keeps_an_all_zero_prefix_finite():
    from serve._openai import truncate

    vectors = np.array([[0.0, 0.0, 1.0], [3.0, 4.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(truncate(vectors, 2), [[0.0, 0.0], [0.6, 0.8]], atol=1e-7)
    assert truncate(vectors, None) is vectors and truncate(vectors, 3) is vectors


# --- inputs longer than the model reads: truncated, and usage counts what was read ------------------


@pytest.mark.parametrize("model", ["tiny", "minilm"])
def test_long_input_is_truncated_and_usage_counts_read_tokens(server, st_models, reference, model):
    long_text = " ".join(["The harvest festival in the village lasted for many days and nights."] * 60)
    limit = st_models[model].max_seq_length  # 64 for tiny, 256 for MiniLM
    assert len(st_models[model].tokenizer(long_text)["input_ids"]) > 2 * limit
    short = TEXTS[2]
    short_tokens = len(st_models[model].tokenizer(short)["input_ids"])  # with [CLS] and [SEP]

    status, answer = http(server, "POST", "/v1/embeddings", {"model": model, "input": [long_text, short]})
    assert status == 200, answer
    check_embeddings(answer, model, [long_text, short], reference)  # the reference truncates the same way
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] == limit + short_tokens


STRICT_APP, STRICT_PREFIX = "bootembed-strict", "/strict"


@pytest.fixture
def strict(server):
    """The tiny model (64 tokens at most) refusing long texts instead of truncating them; deleted after its test, so
    that its encoder's CPU share is free again for the next application."""
    from ray import serve

    from serve.app import AppArgs, build_app

    serve.run(build_app(AppArgs(models={"tiny": server["models"]["tiny"]}, truncate=False)), name=STRICT_APP,
              route_prefix=STRICT_PREFIX)
    yield {"url": server["url"] + STRICT_PREFIX, "models": server["models"]}
    serve.delete(STRICT_APP)


def test_long_input_is_refused_when_truncation_is_off(strict, st_models, reference):
    tokenizer, limit = st_models["tiny"].tokenizer, st_models["tiny"].max_seq_length
    words = "The harvest festival in the village lasted for many days and nights."
    fits = " ".join([words] * 3)
    long_texts = [" ".join([words] * n) for n in (10, 20)]
    lengths = [len(tokenizer(t)["input_ids"]) for t in (fits, *long_texts)]
    assert lengths[0] <= limit < lengths[1] < lengths[2]

    status, answer = http(strict, "POST", "/v1/embeddings", {"model": "tiny", "input": [fits, *long_texts]})
    assert status == 400, answer
    err = answer["error"]
    assert (err["param"], err["code"], err["type"]) == ("input", "context_length_exceeded", "invalid_request_error")
    assert f"at most {limit} tokens" in err["message"]
    assert f"input[1] has {lengths[1]}" in err["message"] and f"input[2] has {lengths[2]}" in err["message"]
    assert "input[0]" not in err["message"]

    status, answer = http(strict, "POST", "/v1/embeddings", {"model": "tiny", "input": [fits, TEXTS[0]]})
    assert status == 200, answer  # texts within the limit are served as usual
    check_embeddings(answer, "tiny", [fits, TEXTS[0]], reference)


# --- API key and serve options: a second application on the same Serve instance --------------------

KEY, KEY_ENV = "sk-test-0123456789", "BOOTEMBED_TEST_SERVE_KEY"
KEYED_APP, KEYED_PREFIX = "bootembed-keyed", "/keyed"


@pytest.fixture(scope="module")
def keyed(server):
    """The tiny model behind an API key, with 2 encoder replicas batching at most 2 requests each."""
    from ray import serve

    from serve.app import AppArgs, build_app

    os.environ[KEY_ENV] = KEY  # read once, when the app is built; only its SHA-256 reaches the replicas
    try:
        # Half a CPU for both replicas: with the main app's one, the instance's 2 CPUs keep room for the apps that
        # later tests deploy beside these (Ray would leave their replicas pending forever).
        serve.run(build_app(AppArgs(models={"tiny": server["models"]["tiny"]}, max_batch_size=2,
                                    batch_wait_timeout_s=0.05, num_replicas=2, api_key_env=KEY_ENV, encoder_cpus=0.25)),
                  name=KEYED_APP, route_prefix=KEYED_PREFIX)
    finally:
        del os.environ[KEY_ENV]
    yield {"url": server["url"] + KEYED_PREFIX, "models": server["models"]}
    serve.delete(KEYED_APP)


def keyed_embed_ok(keyed, reference) -> None:
    status, answer = http(keyed, "POST", "/v1/embeddings", {"model": "tiny", "input": TEXTS[:2]},
                                auth=f"Bearer {KEY}")
    assert status == 200, answer
    check_embeddings(answer, "tiny", TEXTS[:2], reference)


AUTH_FAILURES = {
    # id: (Authorization header or None, words the message must contain)
    "no header": (None, ["missing API key", "Bearer"]),
    "empty bearer": ("Bearer ", ["missing API key"]),
    "wrong key": ("Bearer sk-wrong", ["incorrect API key"]),
    "key as basic auth": (f"Basic {KEY}", ["missing API key"]),
    "key with a suffix": (f"Bearer {KEY}x", ["incorrect API key"]),
}


@pytest.mark.parametrize("path,body", [("/v1/embeddings", {"model": "tiny", "input": ["hi"]}), ("/v1/models", None)],
                         ids=["embeddings", "models"])
@pytest.mark.parametrize("case", list(AUTH_FAILURES), ids=list(AUTH_FAILURES))
def test_api_key_required_then_server_keeps_serving(keyed, reference, case, path, body):
    auth, words = AUTH_FAILURES[case]
    status, answer = http(keyed, "POST" if body else "GET", path, body, auth=auth)
    assert status == 401, answer
    assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["code"] == "invalid_api_key"
    assert answer["error"]["type"] == "invalid_request_error"
    for word in words:
        assert word in answer["error"]["message"], (word, answer["error"]["message"])
    keyed_embed_ok(keyed, reference)


def test_api_key_accepted_and_healthz_open(keyed, server, reference):
    assert http(keyed, "GET", "/healthz") == (200, {"status": "ok", "models": ["tiny"]})
    status, answer = http(keyed, "GET", "/v1/models", auth=f"bearer {KEY}")  # the scheme is case-insensitive
    assert status == 200 and [m["id"] for m in answer["data"]] == ["tiny"]
    keyed_embed_ok(keyed, reference)
    embed_ok(server, reference)  # the application without a key beside it still needs none


def test_openai_client_with_and_without_the_key(keyed, reference):
    import openai
    from openai import OpenAI

    wrong = OpenAI(base_url=f"{keyed['url']}/v1", api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.embeddings.create(model="tiny", input=TEXTS[:2])
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"

    right = OpenAI(base_url=f"{keyed['url']}/v1", api_key=KEY, max_retries=0, timeout=60)
    response = right.embeddings.create(model="tiny", input=TEXTS[:2], dimensions=4)
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, truncated(reference("tiny", TEXTS[:2]), 4), atol=1e-5, rtol=0)


def test_num_replicas_and_max_batch_size_take_effect(keyed, reference):
    from ray import serve

    deployment = serve.status().applications[KEYED_APP].deployments["Encoder-tiny"]
    assert deployment.replica_states.get("RUNNING") == 2, deployment

    def one(i: int) -> None:
        texts = [f"request {i}: {TEXTS[i % 5]}"]
        status, answer = http(keyed, "POST", "/v1/embeddings", {"model": "tiny", "input": texts},
                                    auth=f"Bearer {KEY}")
        assert status == 200, answer
        check_embeddings(answer, "tiny", texts, reference)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(64)))

    # Ask the replicas (routed at random) until both answered: each batched, never beyond max_batch_size=2.
    handle = serve.get_deployment_handle("Encoder-tiny", app_name=KEYED_APP)
    stats = {}
    for _ in range(40):
        s = handle.stats.remote().result(timeout_s=30)
        stats[s["replica"]] = s
        if len(stats) == 2:
            break
    assert len(stats) == 2, stats
    assert all(s["batches"] > 0 and s["largest_batch"] <= 2 for s in stats.values()), stats
    assert max(s["largest_batch"] for s in stats.values()) == 2, stats


# --- helpers of `bootembed serve` --------------------------------------------------------------------


def metric_totals(names: list[str], app: str) -> list[float]:
    """Each bootembed counter summed over the replicas of `app`, from the node's Prometheus page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return [sum(float(line.rsplit(" ", 1)[1]) for line in lines
                if line.startswith(f"ray_{name}_total{{") and f'application="{app}"' in line) for name in names]


def test_texts_and_tokens_show_in_rays_metrics(server, reference):
    """Counters per model in Ray's metrics; an app of its own, so no other test's requests are counted."""
    import time

    from ray import serve

    from serve.app import AppArgs, build_app

    app = "bootembed-metrics"
    # A small CPU share: the module's other apps reserve most of the test instance's 2 CPUs.
    serve.run(build_app(AppArgs(models={"minilm": server["models"]["minilm"]}, encoder_cpus=0.1)), name=app,
              route_prefix="/metered")
    try:
        tokens = 0
        for texts in (TEXTS[:2], TEXTS[2:5], [TEXTS[0]]):
            status, answer = http({"url": server["url"] + "/metered"}, "POST", "/v1/embeddings",
                                  {"model": "minilm", "input": texts})
            assert status == 200, answer
            tokens += answer["usage"]["total_tokens"]
        names = ["bootembed_texts_embedded", "bootembed_tokens_embedded"]
        deadline = time.monotonic() + 60  # replicas report their metrics every few seconds
        while metric_totals(names, app) != [6, tokens] and time.monotonic() < deadline:
            time.sleep(1)
        assert metric_totals(names, app) == [6, tokens]
    finally:
        serve.delete(app)


@contextlib.contextmanager
def in_hub_cache(model_id: str, folder: str):
    """`folder` as the Hugging Face hub cache holds a downloaded `model_id` (refs/main -> a snapshot), so that, offline,
    the hub's own lookup finds it as it would after a download. Removed afterwards."""
    from huggingface_hub import constants

    repo = os.path.join(constants.HF_HUB_CACHE, "models--" + model_id.replace("/", "--"))
    assert not os.path.exists(repo), f"{repo} exists: not a test's to replace"
    commit = "0" * 40
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    shutil.copytree(folder, os.path.join(repo, "snapshots", commit))
    try:
        yield
    finally:
        shutil.rmtree(repo)


def test_a_hub_model_id_is_served_under_its_id(server, reference):
    """Loading by id: build_app asks the hub (here: its cache, offline) for the model; the replica loads it by id."""
    from ray import serve

    from serve.app import AppArgs, build_app

    model_id, app = f"bootembed-test/tiny-{uuid.uuid4().hex[:8]}", "bootembed-hub"  # never one left by a crashed run
    with in_hub_cache(model_id, server["models"]["tiny"]):
        serve.run(build_app(AppArgs(models={model_id: model_id}, encoder_cpus=0.1)), name=app, route_prefix="/hub")
        try:
            status, answer = http({"url": server["url"] + "/hub"}, "POST", "/v1/embeddings",
                                  {"model": model_id, "input": TEXTS[:3]})
            assert status == 200, answer
            answer["model"] = "tiny"  # the same weights as the test app's tiny model
            check_embeddings(answer, "tiny", TEXTS[:3], reference)
        finally:
            serve.delete(app)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs the cpu-fast extra")
def test_int8_onnx_app_serves_texts_and_token_arrays(server, st_models, reference, tmp_path):
    """`backend: onnx, quantize: int8`: the replica builds the export on its first start; its vectors are within the
    int8 bound of fp32's (tests/serve/test_backends.py states them), and token arrays give the same as their text."""
    from ray import serve

    from serve.app import AppArgs, build_app

    app = "bootembed-int8"
    serve.run(build_app(AppArgs(models={"minilm": server["models"]["minilm"]}, backend="onnx", quantize="int8",
                                export_dir=str(tmp_path), encoder_cpus=0.1)), name=app, route_prefix="/int8")
    try:
        int8 = {"url": server["url"] + "/int8"}
        status, from_texts = http(int8, "POST", "/v1/embeddings", {"model": "minilm", "input": TEXTS})
        assert status == 200, from_texts
        got = np.array([d["embedding"] for d in from_texts["data"]], dtype=np.float32)
        assert np.sum(got * reference("minilm", TEXTS), axis=1).min() >= 0.96
        ids = [st_models["minilm"].tokenizer(t)["input_ids"] for t in TEXTS]
        status, from_ids = http(int8, "POST", "/v1/embeddings", {"model": "minilm", "input": ids})
        assert status == 200, from_ids
        np.testing.assert_allclose([d["embedding"] for d in from_ids["data"]], got, atol=2e-4)
        assert from_ids["usage"] == from_texts["usage"]
    finally:
        serve.delete(app)


def test_an_unknown_hub_id_or_missing_folder_is_named_before_serving(tmp_path):
    from serve.app import AppArgs, build_app

    with pytest.raises(FileNotFoundError) as caught:
        build_app(AppArgs(models={"a": "bootembed-test/absent", "b": str(tmp_path / "b")}))
    message = str(caught.value)
    assert "bootembed-test/absent" in message and "Hugging Face hub" in message
    assert f"b: {tmp_path / 'b'}" in message and "no modules.json" in message


def test_is_loopback():
    from serve.app import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.org"))


def test_api_key_from_env(monkeypatch):
    from serve.app import API_KEY_ENV, api_key_from_env

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert api_key_from_env(None) is None  # no key by default
    monkeypatch.setenv(API_KEY_ENV, " k1 ")
    assert api_key_from_env(None) == "k1"
    monkeypatch.setenv("MY_KEY", "k2")
    assert api_key_from_env("MY_KEY") == "k2"
    monkeypatch.setenv("MY_EMPTY_KEY", "")
    with pytest.raises(ValueError, match="MY_EMPTY_KEY is not set or empty"):
        api_key_from_env("MY_EMPTY_KEY")  # asked for a key: never silently serve without one

"""Ray Serve application: an OpenAI-compatible embeddings API over bootembed's encoders.

    POST /v1/embeddings {"model": name, "input": str | [str], "encoding_format": "float" | "base64",
                         "dimensions": int (optional)}             -> OpenAI embeddings response
    GET  /v1/models                                            -> the served encoders
    GET  /healthz                                              -> always open (no API key needed)

One `Encoder` deployment per model (with @serve.batch dynamic batching) behind one `Api`
ingress that validates requests and routes them by `model`. Bad requests get a 4xx JSON error
in OpenAI's shape; the server keeps serving.

The official `openai` client asks for base64 unless told otherwise (and decodes it itself), so
both encodings are served: base64 is the little-endian float32 bytes of each vector.

`dimensions` truncates each vector to its first n components and renormalises it (meaningful for
Matryoshka-trained encoders; for others it is a lossy projection, as in OpenAI's API).

With an API key, /v1/* needs `Authorization: Bearer <key>` (401 in OpenAI's shape otherwise). Only the
key's SHA-256 reaches the replicas, so the key itself is not stored in Ray's application config.
"""

# No `from __future__ import annotations` here: Serve's class-based FastAPI views resolve the
# endpoints' annotations elsewhere, and a string "Request" turns `request` into a required query
# parameter (every POST /v1/embeddings answered 422).
import base64
import hashlib
import hmac
import ipaddress
import os
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

MAX_INPUTS = 2048  # per request, as in OpenAI's API
ENCODINGS = ("float", "base64")
API_KEY_ENV = "BOOTEMBED_API_KEY"  # where `bootembed serve` looks for a key unless told another variable
api = FastAPI(title="bootembed embeddings API")


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_inputs(body: object, known: list[str], max_inputs: int = MAX_INPUTS
                 ) -> tuple[str, list[str], str, int | None] | JSONResponse:
    """(model, texts, encoding, dimensions) of a valid request body, or the JSON error that explains what is wrong.

    `dimensions` is only checked for type and sign here; its upper bound depends on the model (see
    `check_dimensions`).
    """
    if not isinstance(body, dict):
        return error(400, "request body must be a JSON object with `model` and `input`")
    model = body.get("model")
    if model is None or model == "":
        return error(400, f"`model` is required; one of {known}", param="model")
    if not isinstance(model, str):
        return error(400, f"`model` must be a string; one of {known}", param="model")
    if model not in known:
        return error(404, f"model {model!r} is not served here; available: {known}", param="model", code="model_not_found")
    texts = body.get("input")
    if texts is None:
        return error(400, "`input` is required: a string or a list of strings", param="input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return error(400, "`input` must be a string or a list of strings (token arrays are not supported)", param="input")
    if not texts:
        return error(400, "`input` must not be an empty list", param="input")
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        return error(400, f"`input` must not contain empty strings (empty at index {empty[:10]})", param="input")
    if len(texts) > max_inputs:
        return error(413, f"`input` has {len(texts)} items; at most {max_inputs} per request", param="input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        return error(400, f"encoding_format {encoding!r} is not supported; use one of {list(ENCODINGS)}",
                     param="encoding_format")
    dimensions = body.get("dimensions")
    # bool is an int subclass and 8.0 is a float: neither is a dimension count.
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        return error(400, f"`dimensions` must be a positive integer; got {dimensions!r}", param="dimensions")
    return model, texts, encoding, dimensions


def check_dimensions(dimensions: int | None, model: str, model_dim: int) -> JSONResponse | None:
    if dimensions is not None and dimensions > model_dim:
        return error(400, f"`dimensions` is {dimensions} but model {model!r} has {model_dim}; use 1 to {model_dim}",
                     param="dimensions")
    return None


def truncate(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` components of each (row) vector, renormalised to unit length."""
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return (cut / np.maximum(norms, 1e-12)).astype(np.float32)  # an all-zero prefix stays zero, not NaN


def encode_vector(vector, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


@serve.deployment
class Encoder:
    """One sentence-transformers model; concurrent requests are encoded together."""

    def __init__(self, path: str, max_batch_size: int, batch_wait_timeout_s: float):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, int(os.environ.get("BOOTEMBED_SERVE_THREADS", "1"))))
        self.model = SentenceTransformer(path, device="cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = self.model.tokenizer
        self.embed.set_max_batch_size(max_batch_size)
        self.embed.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batches, self.largest_batch = 0, 0

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed(self, requests: list[list[str]]) -> list[dict]:
        self.batches, self.largest_batch = self.batches + 1, max(self.largest_batch, len(requests))
        flat = [t for texts in requests for t in texts]
        vectors = self.model.encode(flat, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        # Count the tokens the model actually saw (truncated at its max_seq_length, not the tokenizer's).
        ids = self.tokenizer(flat, truncation=True, max_length=self.model.max_seq_length)["input_ids"]
        tokens = [len(i) for i in ids]
        out, start = [], 0
        for texts in requests:
            end = start + len(texts)
            out.append({"vectors": vectors[start:end].astype(np.float32), "tokens": sum(tokens[start:end])})
            start = end
        return out

    async def __call__(self, texts: list[str]) -> dict:
        return await self.embed(texts)

    def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def stats(self) -> dict:
        """How @serve.batch grouped the requests so far in this replica (largest_batch counts requests, not texts)."""
        replica = serve.get_replica_context().replica_id.unique_id
        return {"replica": replica, "batches": self.batches, "largest_batch": self.largest_batch}


# The ingress only parses JSON and waits on the encoders: it reserves no CPU, so it is never left
# unscheduled behind the encoders on a small machine.
@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Api:
    def __init__(self, encoders: dict[str, DeploymentHandle], max_inputs: int = MAX_INPUTS,
                 api_key_sha256: str | None = None):
        self.encoders = encoders
        self.max_inputs = max_inputs
        self.api_key_sha256 = api_key_sha256
        self.dimensions: dict[str, int] = {}  # asked from each encoder on first need
        self.created = int(time.time())

    def unauthorized(self, request: Request) -> JSONResponse | None:
        """The 401 to answer when a key is required and the request lacks the right one, else None."""
        if self.api_key_sha256 is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error(401, "missing API key: send `Authorization: Bearer <key>`", code="invalid_api_key")
        # Constant-time comparison of digests: the answer time says nothing about the key.
        if not hmac.compare_digest(sha256(token.strip()), self.api_key_sha256):
            return error(401, "incorrect API key provided", code="invalid_api_key")
        return None

    async def model_dimension(self, model: str) -> int:
        if model not in self.dimensions:
            self.dimensions[model] = await self.encoders[model].dimension.remote()
        return self.dimensions[model]

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request):
        denied = self.unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:  # also UnicodeDecodeError
            return error(400, "request body is not valid JSON")
        parsed = parse_inputs(body, sorted(self.encoders), self.max_inputs)
        if isinstance(parsed, JSONResponse):
            return parsed
        model, texts, encoding, dimensions = parsed
        try:
            if dimensions is not None:  # checked before encoding, so a bad request costs no compute
                too_big = check_dimensions(dimensions, model, await self.model_dimension(model))
                if too_big is not None:
                    return too_big
            result = await self.encoders[model].remote(texts)
        except Exception as err:  # noqa: BLE001 - an encoder failure is the server's, in OpenAI's shape
            return error(500, f"encoder {model!r} failed: {type(err).__name__}: {err}")
        vectors = truncate(result["vectors"], dimensions)
        data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, encoding)}
                for i, v in enumerate(vectors)]
        usage = {"prompt_tokens": result["tokens"], "total_tokens": result["tokens"]}
        return {"object": "list", "data": data, "model": model, "usage": usage}

    @api.get("/v1/models")
    async def models(self, request: Request):
        denied = self.unauthorized(request)
        if denied is not None:
            return denied
        return {"object": "list", "data": [{"id": m, "object": "model", "created": self.created, "owned_by": "bootembed"}
                                           for m in sorted(self.encoders)]}

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "models": sorted(self.encoders)}


def build_app(models: dict[str, str], max_batch_size: int = 32, batch_wait_timeout_s: float = 0.01,
              max_inputs: int = MAX_INPUTS, encoder_cpus: float | None = None, num_replicas: int = 1,
              api_key: str | None = None):
    """The Serve application for {model name: sentence-transformers folder}.

    `num_replicas` Encoder replicas per model, each batching up to `max_batch_size` requests that arrive
    within `batch_wait_timeout_s`. Each replica reserves `encoder_cpus` of Ray's CPUs; by default all
    encoder replicas together share one (1/(models x replicas) each), so any number deploys on a one- or
    two-core machine instead of waiting forever for CPUs (Serve's default is one CPU per replica). Their
    real thread count is BOOTEMBED_SERVE_THREADS (default 1). With `api_key`, /v1/* needs it as a Bearer token.
    """
    if not models:
        raise ValueError("no models to serve")
    if num_replicas < 1 or max_batch_size < 1 or batch_wait_timeout_s < 0:
        raise ValueError("num_replicas and max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")
    shares = len(models) * num_replicas
    cpus = (10_000 // shares) / 10_000 if encoder_cpus is None else encoder_cpus  # Ray counts in 1e-4 CPUs
    encoders = {
        name: Encoder.options(name=f"Encoder-{name}", num_replicas=num_replicas, ray_actor_options={"num_cpus": cpus},
                              max_ongoing_requests=2 * max_batch_size)  # room to fill a batch
        .bind(path, max_batch_size, batch_wait_timeout_s)
        for name, path in models.items()
    }
    return Api.bind(encoders, max_inputs, sha256(api_key) if api_key else None)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the API on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def api_key_from_env(name: str | None) -> str | None:
    """The API key in environment variable `name` (default BOOTEMBED_API_KEY), or None when there is none.

    Naming a variable explicitly means a key is wanted: an unset or empty one is an error, not a silent
    unauthenticated server.
    """
    key = os.environ.get(name or API_KEY_ENV, "").strip()
    if not key and name is not None:
        raise ValueError(f"--api-key-env {name}: environment variable {name} is not set or empty")
    return key or None


def models_of_run(run_dir: str) -> dict[str, str]:
    """{name: folder} of the encoders a run trained, or of one sentence-transformers folder.

    One synthesis strategy: the encoder is named after the run directory. Several: `<run>-<strategy>` each.
    The non-synthetic baseline is a yardstick, not a product, and is not served.
    """
    root = os.path.abspath(os.path.expanduser(run_dir))
    name = os.path.basename(root)
    if os.path.isfile(os.path.join(root, "modules.json")):
        return {name: root}
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{run_dir}: no such directory (expected a run directory or a sentence-transformers folder)")
    models_dir = os.path.join(root, "train", "models")
    trained = sorted(v for v in (os.listdir(models_dir) if os.path.isdir(models_dir) else [])
                     if v != "non_synthetic" and os.path.isfile(os.path.join(models_dir, v, "modules.json")))
    if len(trained) == 1:
        return {name: os.path.join(models_dir, trained[0])}
    if trained:
        return {f"{name}-{v}": os.path.join(models_dir, v) for v in trained}
    raise FileNotFoundError(
        f"{run_dir}: neither a run directory with a trained model (nothing in {models_dir}/*/modules.json) nor a "
        "sentence-transformers folder (no modules.json); train one with `bootembed run CONFIG` first"
    )

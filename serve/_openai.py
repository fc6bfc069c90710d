"""OpenAI's embeddings protocol as pure functions: request checks, errors and response bodies (no Ray, no model)."""

import base64
import json

import numpy as np
from fastapi.responses import JSONResponse, Response

MAX_INPUTS = 2048  # per request, as in OpenAI's API
# What OpenAI's API accepts as `input`; token arrays are read as the served model's own token ids, as vLLM and TEI do.
INPUT_SHAPES = ("a string, a list of strings, a token array (list of integers) or a list of token arrays")
ENCODINGS = ("float", "base64")
# Components of a unit vector written with 9 decimals: at most 5e-10 off, below float32's resolution for all but
# the tiniest components, and JSON about 40% shorter and 2x faster to write than float64's 17-digit repr.
FLOAT_DECIMALS = 9


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    """An error answer in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def parse_inputs(body: object, known: list[str], max_inputs: int = MAX_INPUTS
                 ) -> tuple[str, list[str] | list[list[int]], str, int | None] | JSONResponse:
    """(model, inputs, encoding, dimensions) of a valid request body, or the JSON error that explains what is wrong.

    `inputs` is a list of texts or a list of token arrays (the model's own token ids, read as given: no special
    tokens or prompt added, as vLLM and TEI read them); their range is checked by the encoder, which knows the
    model's vocabulary.

    Wrong types answer 400 as OpenAI's API does (not FastAPI's 422), so clients see one error shape. `dimensions`
    is only checked for type and sign here; its upper bound depends on the model (see `check_dimensions`).
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
        return error(400, f"`input` is required: {INPUT_SHAPES}", param="input")
    if isinstance(texts, str) or (isinstance(texts, list) and texts and all(is_token(t) for t in texts)):
        texts = [texts]  # one text, or one token array
    if not isinstance(texts, list) or not (all(isinstance(t, str) for t in texts) or
                                           all(isinstance(t, list) and all(is_token(i) for i in t) for t in texts)):
        return error(400, f"`input` must be {INPUT_SHAPES}, not a mix", param="input")
    if not texts:
        return error(400, "`input` must not be an empty list", param="input")
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        what = "empty strings" if isinstance(texts[0], str) else "empty token arrays"
        return error(400, f"`input` must not contain {what} (empty at index {empty[:10]})", param="input")
    negative = [(i, t) for i, ids in enumerate(texts) if isinstance(ids, list) for t in ids if t < 0]
    if negative:
        return error(400, "token ids must be 0 or more; got " + ", ".join(f"input[{i}] has {t}" for i, t in negative[:5]),
                     param="input")
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


def is_token(value: object) -> bool:
    return type(value) is int  # bool is an int subclass, 3.0 a float: neither is a token id


def bad_ids(model: str, bad: list[tuple[int, int]], vocabulary: int) -> JSONResponse:
    """The 400 for token ids the model's vocabulary does not have."""
    shown = ", ".join(f"input[{i}] has {t}" for i, t in bad)
    return error(400, f"model {model!r} has token ids 0 to {vocabulary - 1} but {shown}; token arrays are read as "
                 "the model's own tokenizer's ids", param="input", code="invalid_token_ids")


def check_dimensions(dimensions: int | None, model: str, model_dim: int) -> JSONResponse | None:
    if dimensions is not None and dimensions > model_dim:
        return error(400, f"`dimensions` is {dimensions} but model {model!r} has {model_dim}; use 1 to {model_dim}",
                     param="dimensions")
    return None


def too_long(model: str, lengths: list[tuple[int, int]], limit: int) -> JSONResponse:
    """The 400 for texts longer than the model reads, when the server refuses rather than truncates them."""
    shown = ", ".join(f"input[{i}] has {n}" for i, n in lengths[:5]) + (" ..." if len(lengths) > 5 else "")
    return error(400, f"model {model!r} reads at most {limit} tokens per text but {shown}; shorten or split them",
                 param="input", code="context_length_exceeded")


def truncate(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` components of each (row) vector, renormalised to unit length."""
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return (cut / np.maximum(norms, 1e-12)).astype(np.float32)  # an all-zero prefix stays zero, not NaN


def embedding_values(vectors: np.ndarray, encoding: str) -> list:
    """Each row as OpenAI sends it: a list of floats, or base64 of its little-endian float32 bytes."""
    if encoding == "base64":
        return [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    return np.round(vectors.astype(np.float64), FLOAT_DECIMALS).tolist()


def embeddings_response(model: str, vectors: np.ndarray, encoding: str, tokens: int) -> Response:
    """The 200 answer, serialised here in one json.dumps: FastAPI's own encoder walks every float in Python (2-3x
    slower for a few hundred vectors)."""
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(embedding_values(vectors, encoding))]
    body = {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

"""Embeddings for the evaluation: each model loaded once, each distinct text encoded once per model.

Every task's texts are gathered before any model runs (`distinct_texts`), so a text that several tasks share (the
English UDHR pool of every language, the probe's English training names) is encoded once, and all of a model's texts
go through the encoder in one pass: sorted by token length, so a batch holds texts of about the same length and
little padding, and batched by tokens (`length_batches`) rather than by a fixed count, so short texts (words, emoji
names) fill large batches and long paragraphs small ones. Batching changes float rounding in the last bits of a
vector (~1e-7), not the reports: metrics.json stays byte-identical to the one written by encoding each task's texts
in batches of 32 (benchmarks/bench_eval.py checks it on the demo).

evaluate.precision bf16 runs the encoder under torch's CPU autocast (`arithmetic`): matrix products in bf16, norms and
softmax in fp32, vectors returned as fp32. On a CPU with native bf16 (AVX512-BF16, AMX) the demo's texts encode about 1.5x
faster than in fp32 through oneDNN (pipeline/cpu_linear.py; 2.2-2.8x faster than fp32 through MKL on AMD CPUs);
benchmarks/bench_eval.py --precision bf16 prints the time and what it changes in the metrics.

Vectors are kept on disk per model (`encode_cached`): under cache_dir/vectors/, one file per model folder content,
prefix and precision, so a rerun of the stage (a changed report setting, `bootembed eval`, a new task) and every run
that shares the base encoder encode only the texts no earlier run gave that model. Keyed by what the folder holds, not where it
is: a retrained model is a new file, never stale vectors.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Tokens (padded) in one forward pass: evaluate.batch_size texts of TOKENS_PER_TEXT tokens (32 x 128 = 4096). Measured
# on the demo's texts with e5-small, 2 CPU threads: 4096 tokens a pass encoded them 2.8x faster than 32 texts a pass
# (the old way: 2,000 words and names in batches of 32 cost three times the 230 paragraphs), 1.6x faster than 1024
# (one measurement on a shared machine: pick again with benchmarks/bench_eval.py if the machine differs).
TOKENS_PER_TEXT = 128


@dataclass
class Embeddings:
    """A model's unit vectors of distinct texts; `of(texts)` stacks them in the order asked."""

    index: dict[str, int]
    vectors: np.ndarray  # [texts, dim]
    token_lengths: np.ndarray  # [texts]: tokens of prefix + text, uncut
    max_seq_length: int

    def of(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1))
        return self.vectors[[self.index[t] for t in texts]]

    def truncation(self) -> dict:
        """How many of the texts were longer than the model reads (max_seq_length), so were cut."""
        if not len(self.token_lengths):
            return {"max_seq_length": self.max_seq_length, "texts": 0, "truncated_share": 0.0, "longest": 0}
        return {"max_seq_length": self.max_seq_length, "texts": len(self.token_lengths),
                "longest": int(self.token_lengths.max()),
                "truncated_share": int((self.token_lengths > self.max_seq_length).sum()) / len(self.token_lengths)}


def distinct_texts(groups: Iterable[Iterable[str]]) -> list[str]:
    """Every text of every group once, in the order first seen."""
    return list(dict.fromkeys(t for group in groups for t in group))


def load_model(path: str):
    """A sentence-transformers model on the CPU, for inference (its linear layers through oneDNN where that is faster:
    pipeline/cpu_linear.py); a LoRA adapter folder is merged into its base first."""
    from pipeline import cpu_linear, encoder_lora
    from pipeline.models import load_inference_encoder

    if encoder_lora.is_adapter_folder(path):
        model = encoder_lora.load_merged(path)
        cpu_linear.accelerate(model)
        return model
    return load_inference_encoder(path)


def length_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Indices of texts grouped into batches, longest first, each as many texts as fit in `max_tokens` once padded to
    the batch's longest (at least one): short texts fill large batches, long ones small."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        size = max(1, max_tokens // max(int(lengths[order[start]]), 1))
        batches.append(order[start:start + size])
        start += size
    return batches


def arithmetic(precision: str):
    """The context a model encodes in: fp32 as loaded, or bf16 under torch's CPU autocast."""
    if precision == "bf16":
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's check: AVX512-BF16 or AMX); without it bf16 is emulated, slower
    than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def encode(model, texts: list[str], prefix: str, batch_size: int, precision: str = "fp32") -> Embeddings:
    """Unit vectors of `texts` (distinct) under `model`, with `prefix` (E5's "query: ") before each; a forward pass
    holds up to batch_size * TOKENS_PER_TEXT tokens."""
    lengths = token_lengths(model, texts, prefix)
    readable = np.minimum(lengths, model.max_seq_length)  # what the model reads, hence pads to
    order, parts = [], []
    with arithmetic(precision):
        for batch in length_batches(readable, batch_size * TOKENS_PER_TEXT):
            parts.append(model.encode([texts[i] for i in batch], prompt=prefix, batch_size=len(batch),
                                      normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False))
            order.append(batch)
    vectors = np.zeros((0, 1), dtype=np.float32)
    if parts:
        vectors = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
        vectors[np.concatenate(order)] = np.concatenate(parts)
    return Embeddings({t: i for i, t in enumerate(texts)}, vectors, lengths, model.max_seq_length)


def token_lengths(model, texts: list[str], prefix: str) -> np.ndarray:
    """Tokens of prefix + text for each text, special tokens included, before any cut."""
    if not texts:
        return np.zeros(0, dtype=int)
    return np.array([len(ids) for ids in model.tokenizer([prefix + t for t in texts], truncation=False)["input_ids"]])


def encode_cached(path: str, texts: list[str], prefix: str, batch_size: int, cache_dir: str | None,
                  precision: str = "fp32") -> Embeddings:
    """encode() of the model in folder `path`, reusing the vectors it already gave these texts with this prefix and
    precision (read from cache_dir/vectors/) and adding the new ones there; the model is not even loaded when every
    text is known. No cache (None, or a model that is not a local folder): plain encode()."""
    if cache_dir is None or not texts or not os.path.isdir(path):
        return encode(load_model(path), texts, prefix, batch_size, precision)
    kind = "" if precision == "fp32" else f"-{precision}"  # fp32 files keep the name they had before bf16 existed
    name = f"{folder_digest(path)}-{text_key(prefix)[:8]}{kind}.npz"
    file = Path(os.path.expanduser(cache_dir)) / "vectors" / name
    known = read_vectors(file)
    missing = [t for t in texts if text_key(t) not in known.index]
    if missing:
        new = encode(load_model(path), missing, prefix, batch_size, precision)
        known = merge_vectors(known, Embeddings({text_key(t): i for t, i in new.index.items()}, new.vectors,
                                                new.token_lengths, new.max_seq_length))
        write_vectors(file, known)
    rows = np.array([known.index[text_key(t)] for t in texts], dtype=int)
    return Embeddings({t: i for i, t in enumerate(texts)}, known.vectors[rows] if len(rows) else np.zeros((0, 1), np.float32),
                      known.token_lengths[rows] if len(rows) else np.zeros(0, dtype=int), known.max_seq_length)


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def folder_digest(path: str) -> str:
    """SHA-256 of a folder's file names and bytes (~0.5 s for e5-small's 470 MB)."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(f for f in root.rglob("*") if f.is_file()):
        digest.update(str(file.relative_to(root)).encode())
        with open(file, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:20]


def read_vectors(file: Path) -> Embeddings:
    """The cached vectors keyed by text_key; none if the file is missing or unreadable (a cache is never an error)."""
    try:
        with np.load(file) as data:
            return Embeddings({k: i for i, k in enumerate(data["keys"].tolist())}, data["vectors"], data["token_lengths"],
                              int(data["max_seq_length"]))
    except (OSError, ValueError, KeyError):
        return Embeddings({}, np.zeros((0, 0), np.float32), np.zeros(0, dtype=int), 0)


def merge_vectors(old: Embeddings, new: Embeddings) -> Embeddings:
    if not old.index:
        return new
    offset = len(old.index)
    return Embeddings({**old.index, **{k: offset + i for k, i in new.index.items()}}, np.concatenate([old.vectors, new.vectors]),
                      np.concatenate([old.token_lengths, new.token_lengths]), new.max_seq_length)


def write_vectors(file: Path, emb: Embeddings) -> None:
    """Written beside and renamed into place: a run that stops mid-write, or two runs at once, leave a whole file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npz")
    keys = sorted(emb.index, key=emb.index.get)
    np.savez(tmp, keys=np.array(keys), vectors=emb.vectors, token_lengths=emb.token_lengths,
             max_seq_length=np.array(emb.max_seq_length))
    os.replace(tmp, file)

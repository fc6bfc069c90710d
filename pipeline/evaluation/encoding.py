"""Embeddings for the evaluation: each model loaded once, each distinct text encoded once per model.

Every task's texts are gathered before any model runs (`distinct_texts`), so a text that several tasks share (the
English UDHR pool of every language, the probe's English training names) is encoded once, and all of a model's texts
go through the encoder in one pass: sorted by token length, so a batch holds texts of about the same length and
little padding, and batched by tokens (`length_batches`) rather than by a fixed count, so short texts (words, emoji
names) fill large batches and long paragraphs small ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# Tokens (padded) in one forward pass: batch_size texts of TOKENS_PER_TEXT tokens. Measured on e5-small, 2 CPU threads:
# beyond a few thousand tokens per pass the matrix products run no faster, and attention over long texts grows.
TOKENS_PER_TEXT = 64


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
    """A sentence-transformers model on the CPU, for inference."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


def length_batches(lengths: np.ndarray, batch_size: int, max_tokens: int) -> list[np.ndarray]:
    """Indices of texts grouped into batches, longest first: each batch at most `batch_size` * (how many texts of the
    batch's longest length fit in `max_tokens`), so that a batch's padded size stays under max_tokens while a batch of
    long texts keeps at most batch_size of them."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(batch_size, max_tokens // longest)
        batches.append(order[start:start + size])
        start += size
    return batches


def encode(model, texts: list[str], prefix: str, batch_size: int) -> Embeddings:
    """Unit vectors of `texts` (distinct) under `model`, with `prefix` (E5's "query: ") before each."""
    lengths = token_lengths(model, texts, prefix)
    readable = np.minimum(lengths, model.max_seq_length)  # what the model reads, hence pads to
    order, parts = [], []
    for batch in length_batches(readable, batch_size, batch_size * TOKENS_PER_TEXT):
        parts.append(model.encode([texts[i] for i in batch], prompt=prefix, batch_size=len(batch), normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False))
        order.append(batch)
    vectors = np.zeros((0, 1), dtype=np.float32)
    if parts:
        vectors = np.empty((len(texts), parts[0].shape[1]), dtype=parts[0].dtype)
        vectors[np.concatenate(order)] = np.concatenate(parts)
    return Embeddings({t: i for i, t in enumerate(texts)}, vectors, lengths, model.max_seq_length)


def token_lengths(model, texts: list[str], prefix: str) -> np.ndarray:
    """Tokens of prefix + text for each text, special tokens included, before any cut."""
    if not texts:
        return np.zeros(0, dtype=int)
    return np.array([len(ids) for ids in model.tokenizer([prefix + t for t in texts], truncation=False)["input_ids"]])

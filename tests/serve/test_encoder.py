"""The Encoder deployment's class on its own (no Ray): token counts, and batches encoded side by side in threads."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from serve._encoder import Encoder, token_counter

pytestmark = pytest.mark.timeout(120)

TEXTS = ["short", "a somewhat longer sentence to encode", "ọmọ mi wà nílé " * 5, "word " * 600, "x"]


def encoder(path: str, truncate: bool = True, backend: str = "torch", quantize: str = "none", export_dir: str = ""):
    """The class behind the deployment, built directly: one model, loaded in __init__ as a replica would."""
    return Encoder.func_or_class({"m": path}, max_batch_size=8, batch_wait_timeout_s=0.0, max_models=1,
                                 truncate=truncate, threads=1, concurrent_batches=2, backend=backend,
                                 quantize=quantize, export_dir=export_dir)


@pytest.mark.parametrize("model", ["tiny", "e5"])
def test_token_counter_counts_what_the_tokenizer_gives_untruncated(tiny_encoder, e5_path, model):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(tiny_encoder if model == "tiny" else e5_path)
    expected = [len(ids) for ids in st.tokenizer(TEXTS, truncation=False)["input_ids"]]
    assert token_counter(st.tokenizer)(TEXTS) == expected
    assert max(expected) > st.max_seq_length  # the long text is counted whole, not cut at the model's limit


def test_batches_encoded_side_by_side_all_succeed_and_match(tiny_encoder):
    """Counting tokens and encoding on the same model from several threads: a tokenizer shared by both used to flip
    its padding off under another thread's encode ("Unable to create tensor", seen in CI)."""
    replica = encoder(tiny_encoder)
    loaded = replica.preloaded["m"]
    requests = [[t] for t in TEXTS] + [TEXTS[:3]]
    expected = replica._encode_requests(loaded, requests)
    errors, mismatches = [], []

    def hammer(offset: int) -> None:
        for i in range(150):
            mine = requests[(i + offset) % len(requests):] or requests  # batches of different lengths
            try:
                got = replica._encode_requests(loaded, mine)
            except Exception as err:  # noqa: BLE001 - collected and asserted on below
                errors.append(repr(err)[:300])
                continue
            want = expected[len(requests) - len(mine):]
            for g, w in zip(got, want, strict=True):
                if g["tokens"] != w["tokens"] or not np.allclose(g["vectors"], w["vectors"], atol=1e-5):
                    mismatches.append((offset, i))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so an unsafe interleaving shows up quickly
    try:
        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == [], errors[:3]
    assert mismatches == []

import numpy as np
import pytest

from pipeline.evaluation import encoding


def test_distinct_texts_keep_the_first_occurrence_of_each_text_across_tasks():
    assert encoding.distinct_texts([["a", "b"], ["b", "c"], [], ["a", "d"]]) == ["a", "b", "c", "d"]


def test_length_batches_put_long_texts_first_and_pack_short_ones_by_tokens():
    lengths = np.array([3, 50, 4, 50, 10, 3])
    batches = encoding.length_batches(lengths, max_tokens=100)
    # 50-token texts: 100 // 50 = 2 per batch; then the longest left is 10 tokens: 100 // 10 = 10 texts fit
    assert [b.tolist() for b in batches] == [[1, 3], [4, 2, 0, 5]]
    assert [b.tolist() for b in encoding.length_batches(lengths, max_tokens=8)] == [[1], [3], [4], [2, 0], [5]], \
        "a text longer than the budget is a batch of its own"
    assert encoding.length_batches(np.array([], dtype=int), 2048) == []


@pytest.fixture(scope="module")
def tiny_model(tiny_encoder):
    return encoding.load_model(tiny_encoder)


def test_encode_gives_each_distinct_text_its_sentence_transformers_vector(tiny_model, monkeypatch):
    texts = ["a", "a much longer sentence about the rights of every person " * 3, "two words", "x y z", "the end"]
    encoded = []  # every text the model encodes, to check none is encoded twice
    real = tiny_model.encode
    monkeypatch.setattr(tiny_model, "encode", lambda batch, **kw: encoded.extend(batch) or real(batch, **kw))
    emb = encoding.encode(tiny_model, texts, "query: ", batch_size=2)
    assert sorted(encoded) == sorted(texts)
    monkeypatch.undo()
    expected = tiny_model.encode(texts, prompt="query: ", normalize_embeddings=True, convert_to_numpy=True)
    assert np.allclose(emb.of(texts), expected, atol=1e-6)
    assert np.allclose(emb.of(["x y z", "a"]), expected[[3, 0]], atol=1e-6)
    assert emb.of([]).shape == (0, 1)


def test_truncation_counts_texts_longer_than_the_model_reads(tiny_model):
    long = "word " * 100  # more than the tiny encoder's 64 tokens
    emb = encoding.encode(tiny_model, ["short", long], "", batch_size=8)
    t = emb.truncation()
    assert t["max_seq_length"] == 64 and t["texts"] == 2 and t["truncated_share"] == 0.5 and t["longest"] > 100
    assert encoding.encode(tiny_model, [], "", batch_size=8).truncation() == \
        {"max_seq_length": 64, "texts": 0, "truncated_share": 0.0, "longest": 0}


def test_encode_cached_encodes_only_texts_the_model_has_not_seen_and_gives_the_same_vectors(tiny_encoder, tmp_path, monkeypatch):
    encoded = []  # texts that reached a model, over every call
    real_load = encoding.load_model

    def counting_load(path):
        model = real_load(path)
        real = model.encode
        model.encode = lambda batch, **kw: encoded.extend(batch) or real(batch, **kw)
        return model

    monkeypatch.setattr(encoding, "load_model", counting_load)
    first = encoding.encode_cached(tiny_encoder, ["a", "two words", "x y z"], "query: ", 8, str(tmp_path))
    assert sorted(encoded) == ["a", "two words", "x y z"] and len(list((tmp_path / "vectors").iterdir())) == 1
    encoded.clear()
    texts = ["x y z", "a new sentence", "a", "word " * 100]
    again = encoding.encode_cached(tiny_encoder, texts, "query: ", 8, str(tmp_path))
    assert sorted(encoded) == ["a new sentence", "word " * 100], "only the texts not cached reach the model"
    plain = encoding.encode(real_load(tiny_encoder), texts, "query: ", 8)
    assert np.allclose(again.of(texts), plain.of(texts), atol=1e-6) and np.array_equal(again.of(["a"]), first.of(["a"]))
    assert again.truncation() == plain.truncation()
    encoded.clear()
    assert np.array_equal(encoding.encode_cached(tiny_encoder, texts, "query: ", 8, str(tmp_path)).of(texts), again.of(texts))
    assert encoded == [], "every text known: the model is not run"
    encoding.encode_cached(tiny_encoder, ["a"], "passage: ", 8, str(tmp_path))
    assert encoded == ["a"], "another prefix is another vector"


def test_encode_cached_tells_models_apart_by_their_files_and_survives_a_broken_cache(tiny_encoder, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    changed = tmp_path / "changed"
    shutil.copytree(tiny_encoder, changed)
    weights = next(changed.rglob("model.safetensors"))
    tensors = {k: v + 0.5 * torch.randn_like(v) for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    cache = tmp_path / "cache"
    texts = ["one sentence", "another one"]
    base = encoding.encode_cached(tiny_encoder, texts, "", 8, str(cache)).of(texts)
    other = encoding.encode_cached(str(changed), texts, "", 8, str(cache)).of(texts)
    assert not np.allclose(base, other, atol=1e-3), "a retrained model gets its own vectors, not the cached ones"
    for file in (cache / "vectors").iterdir():
        file.write_bytes(b"not an npz file")
    assert np.allclose(encoding.encode_cached(tiny_encoder, texts, "", 8, str(cache)).of(texts), base, atol=1e-6)


def test_bf16_vectors_are_close_to_fp32_and_cached_apart_from_them(tiny_encoder, tmp_path):
    """evaluate.precision bf16: the matrix products run in bf16, so the vectors are near fp32's but not equal, and a
    cache of fp32 vectors never answers for bf16 (nor the reverse)."""
    texts = ["one sentence about rights", "another one", "Ẹ kú àárọ̀", "word " * 40]
    fp32 = encoding.encode_cached(tiny_encoder, texts, "query: ", 8, str(tmp_path))
    bf16 = encoding.encode_cached(tiny_encoder, texts, "query: ", 8, str(tmp_path), precision="bf16")
    assert bf16.vectors.dtype == np.float32 and np.allclose(np.linalg.norm(bf16.of(texts), axis=1), 1.0, atol=1e-5)
    cosines = np.sum(fp32.of(texts) * bf16.of(texts), axis=1)
    assert cosines.min() > 0.99 and not np.array_equal(fp32.of(texts), bf16.of(texts)), cosines
    assert sorted(f.name.endswith("-bf16.npz") for f in (tmp_path / "vectors").iterdir()) == [False, True]
    assert np.array_equal(encoding.encode_cached(tiny_encoder, texts, "query: ", 8, str(tmp_path)).of(texts), fp32.of(texts))
    assert np.array_equal(encoding.encode_cached(tiny_encoder, texts, "query: ", 8, str(tmp_path), precision="bf16").of(texts),
                          bf16.of(texts))

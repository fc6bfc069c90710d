"""serve/_backends.py on real models: every backend's vectors against the torch fp32 model's, the pooling and prompt
of a trained model reproduced by the exported graph, exports reused, and broken exports rebuilt or refused."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from serve._backends import MANIFEST, MIN_COSINE, ExportError, export_folder, load, missing_packages

pytestmark = [pytest.mark.timeout(900),
              pytest.mark.skipif(bool(missing_packages("onnx") or missing_packages("openvino")),
                                 reason="needs the cpu-fast extra: pip install -e '.[cpu-fast]'")]

# Fixed texts, none of them in the probe or calibration sets the builds use.
TEXTS = ["The cat sat on the mat.", "Ẹ kú àárọ̀, báwo ni?", "Kumno phi long?", "a",
         "A much longer sentence about the weather in Lagos, which was hot and humid all week.",
         "Every child has the right to go to school and to learn to read and write. " * 4,
         "Market prices rose again in the capital this morning.", "river"]
# Smallest cosine to the torch fp32 vectors of TEXTS, per path (measured on MiniLM and on MiniLM re-pooled
# avg_first_last with a prompt: fp32 exports 0.99999+, onnx int8 .98, openvino int8 .99, torch int8 .93).
LEAST = {("onnx", "none"): 0.9999, ("openvino", "none"): 0.9999,
         ("onnx", "int8"): 0.96, ("openvino", "int8"): 0.96, ("torch", "int8"): 0.90}


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> str:
    """One export folder for the session: each (model, backend, quantize) is built once."""
    return str(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="session")
def trained_like(tmp_path_factory, minilm_path) -> str:
    """MiniLM's weights saved the way pipeline/train.py exports a trained model: avg_first_last pooling (mean of the
    first and last layers' token states), normalisation, and a default prompt put before every text."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Transformer

    from pipeline.train import pooling_modules

    transformer = Transformer(minilm_path, max_seq_length=128, config_kwargs={"output_hidden_states": True})
    model = SentenceTransformer(modules=[transformer, *pooling_modules(transformer, "avg_first_last"), Normalize()],
                                prompts={"query": "query: ", "document": "query: "}, default_prompt_name="query")
    path = str(tmp_path_factory.mktemp("trained_like") / "model")
    model.save(path)
    return path


def reference(path: str, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu").encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def test_trained_like_model_pools_avg_first_last_with_its_prompt(trained_like, minilm_path):
    """The fixture is what it claims: its vectors differ from MiniLM's own (other pooling, a prompt)."""
    got, plain = reference(trained_like, TEXTS[:3]), reference(minilm_path, TEXTS[:3])
    assert np.all(cosines(got, plain) < 0.99)


@pytest.mark.parametrize("backend,quantize", [("onnx", "int8"), ("openvino", "int8"), ("torch", "int8"),
                                              pytest.param("onnx", "none", marks=pytest.mark.slow),
                                              pytest.param("openvino", "none", marks=pytest.mark.slow)])
@pytest.mark.parametrize("model", ["minilm", "trained_like"])
def test_backend_vectors_match_torch_fp32(request, export_dir, backend, quantize, model):
    path = request.getfixturevalue("minilm_path" if model == "minilm" else model)
    encoder = load(path, backend, quantize, "cpu", threads=1, streams=2, export_dir=export_dir)
    got = encoder.encode(TEXTS, batch_size=3)  # several passes, each padded to its longest text
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    least = cosines(got, reference(path, TEXTS)).min()
    assert least >= LEAST[backend, quantize], f"{encoder.name} on {model}: smallest cosine {least:.4f}"


@pytest.mark.parametrize("backend,quantize", [("torch", "none"), ("onnx", "int8")])
def test_token_ids_give_the_vectors_of_the_text_they_encode(trained_like, export_dir, backend, quantize):
    """Token arrays are read as given: the ids of prompt + text (special tokens included) give the text's vector."""
    encoder = load(trained_like, backend, quantize, "cpu", threads=1, streams=1, export_dir=export_dir)
    ids = [encoder.tokenizer("query: " + t)["input_ids"] for t in TEXTS]
    np.testing.assert_allclose(encoder.encode_ids(ids, batch_size=3), encoder.encode(TEXTS, batch_size=3), atol=2e-4)


def test_export_is_built_once_and_reused(minilm_path, export_dir):
    first = load(minilm_path, "onnx", "int8", "cpu", threads=1, streams=1, export_dir=export_dir)
    manifest = os.path.join(export_of(minilm_path, export_dir, "onnx-int8"), MANIFEST)
    built = os.stat(manifest).st_mtime_ns
    again = load(minilm_path, "onnx", "int8", "cpu", threads=1, streams=1, export_dir=export_dir)
    assert os.stat(manifest).st_mtime_ns == built  # not rebuilt
    np.testing.assert_array_equal(again.encode(TEXTS, 4), first.encode(TEXTS, 4))


def export_of(path: str, export_dir: str, variant: str) -> str:
    """The folder holding `variant` (e.g. onnx-int8) of the model folder at `path`."""
    folder = str(export_folder(path, None, *variant.split("-"), export_dir))
    assert os.path.isdir(folder), folder
    return folder


@pytest.mark.parametrize("damage", ["corrupt", "missing", "manifest", "probe"])
def test_broken_export_is_rebuilt_naming_what_was_wrong(tmp_path, minilm_path, damage, caplog):
    export_dir = str(tmp_path / "exports")
    load(minilm_path, "onnx", "int8", "cpu", threads=1, streams=1, export_dir=export_dir)
    folder = export_of(minilm_path, export_dir, "onnx-int8")
    graph, manifest = os.path.join(folder, "model.onnx"), os.path.join(folder, MANIFEST)
    if damage == "corrupt":  # a few bytes in the middle of the weights: the file still loads, vectors would be wrong
        with open(graph, "r+b") as f:
            f.seek(os.path.getsize(graph) // 2)
            f.write(b"\x7f" * 64)
        named = graph
    elif damage == "missing":
        os.remove(graph)
        named = graph
    elif damage == "manifest":  # an interrupted build leaves no manifest
        os.remove(manifest)
        named = manifest
    else:  # the files are as built, but the graph no longer gives the vectors recorded (another runtime, say)
        with open(manifest) as f:
            recorded = json.load(f)
        recorded["probe_vectors"] = (-np.asarray(recorded["probe_vectors"])).tolist()
        with open(manifest, "w") as f:
            json.dump(recorded, f)
        named = "differ from those recorded"
    with caplog.at_level(logging.WARNING, logger="bootembed.serve"):
        rebuilt = load(minilm_path, "onnx", "int8", "cpu", threads=1, streams=1, export_dir=export_dir)
    assert any("rebuilding the onnx-int8 export" in r.message and named in r.message for r in caplog.records), \
        [r.message for r in caplog.records]
    assert cosines(rebuilt.encode(TEXTS, 4), reference(minilm_path, TEXTS)).min() >= LEAST["onnx", "int8"]


def test_export_too_far_from_fp32_is_refused(tmp_path, minilm_path, monkeypatch):
    """A build whose vectors miss the bound is never served: the error says by how much and what to do."""
    monkeypatch.setitem(MIN_COSINE, "int8", 0.99999)  # a bound no int8 build of MiniLM reaches
    with pytest.raises(ExportError, match=r"onnx-int8 export of .* gives vectors too far from the torch fp32 "
                                          r"model's: smallest cosine 0\.9\d+ on the probe texts, at least 0\.99999 "
                                          r"needed; serve this model with backend torch"):
        load(minilm_path, "onnx", "int8", "cpu", threads=1, streams=1, export_dir=str(tmp_path))
    assert not any((tmp_path / d).is_dir() and any(p.name == "onnx-int8" for p in (tmp_path / d).iterdir())
                   for d in os.listdir(tmp_path)), "a refused build must leave nothing to load"


def test_onnx_int8_keeps_the_down_projections_fp32(minilm_path, export_dir):
    """Dynamic int8 quantises every weight MatMul but the feed-forward blocks' second layers (intermediate -> hidden:
    their GELU outputs have outliers that one scale per batch flattens)."""
    import onnx

    load(minilm_path, "onnx", "int8", "cpu", threads=1, streams=1, export_dir=export_dir)
    graph = onnx.load(os.path.join(export_of(minilm_path, export_dir, "onnx-int8"), "model.onnx")).graph
    weights = {w.name: tuple(w.dims) for w in graph.initializer}
    fp32 = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert len(fp32) == 6 and all(weights[n.input[1]] == (1536, 384) for n in graph.node if n.name in fp32), fp32
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) >= 6 * 5  # q, k, v, attention out, FFN in per layer

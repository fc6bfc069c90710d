"""LoRA adapters on the encoder (`train.lora`): wrap, save, merge, register, and read them back for serving.

The train stage (pipeline/train.py) calls in here at two points: `wrap` on every Ray Train worker right after the
encoder is loaded (only the LoRA weights then train), and `train_adapters` after the full fine-tunes, which trains one
adapter per language (or per language and strategy) and writes, under the stage's folder:

    lora/base/                 the untrained encoder as a sentence-transformers folder with the run's pooling and prompt:
                               the base every adapter is served on
    lora/<id>/                 peft's adapter folder (adapter_config.json, adapter_model.safetensors; a few MB) plus
                               bootembed_lora.json (language, strategy, base weights' SHA-256, data digest, steps)
    lora/registry.json         every adapter, its base and its provenance (each adapter's `metrics` are the
                               evaluate stage's, read beside it: `adapter_evaluations`)
    models/lora-<id>/          only with train.lora.export_merged: the adapter merged into the encoder (peft's
                               merge_and_unload), a plain sentence-transformers folder of the encoder's full size
                               (487 MB for e5-small, against 2.7 MB for the adapter). Without it the evaluate stage
                               merges each adapter in memory (`load_merged`) and `bootembed lora merge` writes one
                               on demand: a thousand languages take a thousand adapters on disk, not 487 GB.

`<id>` is the language (`yor`), or `<lang>-<strategy>` with `per: language_strategy`.

The base is identified by the SHA-256 of its weights (not of its files): the same encoder saved by transformers or by
sentence-transformers, with or without BERT's unused pooler, hashes the same, and a server can check that the
encoder it holds is the one an adapter was trained on before answering with it.

No torch, peft or Ray at import time: the Serve app and the CLI import this module to find and check adapters.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: the section arrives built (on Ray Train workers, pickled)
    from pipeline.config import EncoderLoraConfig

LORA_DIR = "lora"  # under the train stage's folder
BASE_DIR = "base"
REGISTRY = "registry.json"
META = "bootembed_lora.json"  # bootembed's record in each adapter folder (peft's own files stay untouched)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGED_PREFIX = "lora-"  # merged folders: models/lora-<id>
EVALUATIONS = "adapters.json"  # <run>/evaluate/adapters.json: each adapter's numbers, written by the evaluate stage
# What the server applies (serve/_lora.py): plain LoRA on Linear layers. peft options beyond that would change the
# maths, so an adapter using one is refused rather than served with other vectors than its merged model's.
UNSUPPORTED = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "rank_pattern": {}, "alpha_pattern": {},
               "modules_to_save": None}


class AdapterError(ValueError):
    """An adapter folder that cannot be served: missing, truncated, unreadable or using an unsupported peft option."""


# ---------------------------------------------------------------- base identity


def weights_sha256(model) -> str:
    """SHA-256 over a torch module's weights (name, dtype, shape, bytes; in name order).

    BERT's pooler is left out: sentence-transformers never uses it, and a folder saved without it (as the train stage
    does, for DDP) loads with a random one in some libraries.
    """
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("pooler."):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def encoder_sha256(path: str) -> str:
    """The weights' SHA-256 of the Hugging Face encoder (or sentence-transformers folder's transformer) at `path`."""
    from pipeline.models import load_encoder

    _, model = load_encoder(path, freeze_embeddings=False)
    return weights_sha256(model)


# ---------------------------------------------------------------- training


def peft_config(lora: EncoderLoraConfig):
    from peft import LoraConfig

    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      bias="none")


def wrap(model, lora: EncoderLoraConfig):
    """`model` (a transformers encoder) with a fresh LoRA on `lora.target_modules`; only the LoRA weights train."""
    from peft import get_peft_model

    return get_peft_model(model, peft_config(lora))


def without_lora(cfg):
    """`cfg` with train.lora unset: what the stage's full fine-tunes train with (train.lora.keep_full_finetune)."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"lora": None})})


def with_adapter_rate(cfg):
    """`cfg` with train.lr set to train.lora.learning_rate: the rate the adapters train with (and their model cards
    state); train.lr stays the full fine-tunes'."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": cfg.train.lora.learning_rate})})


def folder_bytes(folder: str) -> int:
    """Bytes of the files in `folder` and below: an adapter's or a model's size on disk."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def adapter_ids(cfg, table) -> dict[str, tuple[str, str | None]]:
    """{adapter id: (language, strategy or None)} for the triplets in `table` (columns lang, strategy)."""
    langs = table.column("lang").to_pylist()
    strategies = table.column("strategy").to_pylist() if "strategy" in table.column_names else ["icl"] * len(langs)
    if cfg.train.lora.per == "language":
        return {lang: (lang, None) for lang in sorted(set(langs))}
    return {f"{lang}-{s}": (lang, s) for lang, s in sorted(set(zip(langs, strategies)))}


def training_sets(cfg, triplets_path: str, data_dir: str) -> tuple[dict[str, str], dict[str, tuple[str, str | None]],
                                                                   dict[str, str]]:
    """({adapter id: triplet file}, {adapter id: (language, strategy)}, {adapter id: why it is not trained}).

    Only the configured strategies' triplets are used (the human_nli baseline is no language's data)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.manifest import join

    table = pq.read_table(triplets_path)
    if "lang" not in table.column_names:
        raise ValueError(f"train.lora: {triplets_path} has no `lang` column, so adapters per language cannot be "
                         f"trained (it has {table.column_names}); unset train.lora or rerun the filter stage")
    if "strategy" in table.column_names:
        table = table.filter(pc.is_in(table["strategy"], value_set=pa.array(cfg.synthesis.strategies)))
    ids = adapter_ids(cfg, table)
    os.makedirs(data_dir, exist_ok=True)
    sets, skipped = {}, {}
    for adapter, (lang, strategy) in ids.items():
        mask = pc.equal(table["lang"], lang)
        if strategy is not None:
            mask = pc.and_(mask, pc.equal(table["strategy"], strategy))
        subset = table.filter(mask)
        if subset.num_rows < 2:
            skipped[adapter] = f"{subset.num_rows} triplet(s); at least 2 are needed"
            continue
        sets[adapter] = join(data_dir, f"{MERGED_PREFIX}{adapter}.parquet")
        pq.write_table(subset, sets[adapter])
    return sets, {a: ids[a] for a in sets}, skipped


def save_adapter(encoder_path: str, trained: dict, lora: EncoderLoraConfig, folder: str, meta: dict) -> dict:
    """Save a trained adapter (`trained`: the peft model's trainable parameters, what the train stage's checkpoint
    keeps) as peft's adapter folder plus META; return the merged encoder's state dict (peft's merge_and_unload), ready
    for the sentence-transformers export.

    Raises:
        ValueError: `trained` is not this LoRA's parameters (other names, or some missing)."""
    from pipeline.models import load_encoder

    _, model = load_encoder(encoder_path, freeze_embeddings=False)
    peft_model = wrap(model, lora)
    lora_names = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    if set(trained) != lora_names:
        raise ValueError(f"train.lora: the trained parameters are not the adapter's ({len(set(trained) - lora_names)} "
                         f"unexpected, {len(lora_names - set(trained))} missing, e.g. "
                         f"{sorted(set(trained) ^ lora_names)[:3]})")
    peft_model.load_state_dict(trained, strict=False)  # the base weights stay the encoder's
    peft_model.save_pretrained(folder)
    Path(folder, META).write_text(json.dumps(meta, indent=2) + "\n")
    return peft_model.merge_and_unload().state_dict()


def train_adapters(cfg, encoder_path: str, sets: dict[str, str], labels: dict[str, tuple[str, str | None]],
                   out_dir: str, max_length: int, train_encoders: Callable, export: Callable) -> dict[str, dict]:
    """Train one adapter per set (all in one Ray Train run, through the stage's `train_encoders`), save it, export it merged
    (through the stage's `export`) if train.lora.export_merged, export the serving base once, and write the registry.
    Returns {variant: details}."""
    import pyarrow.parquet as pq

    from pipeline.manifest import join
    from pipeline.manifest import file_digest

    cfg = with_adapter_rate(cfg)
    lora_dir = join(out_dir, LORA_DIR)
    os.makedirs(lora_dir, exist_ok=True)
    lora = cfg.train.lora
    # The untouched encoder with the run's pooling, prompt and length: what the server applies adapters to.
    export(encoder_path, None, cfg, join(lora_dir, BASE_DIR), {"variant": "lora base (untrained)"}, max_length)
    base_sha = encoder_sha256(encoder_path)
    entries, variants = [], {}
    for adapter, path in sets.items():
        print(f"[train] LoRA {adapter}: {pq.read_metadata(path).num_rows} triplets", flush=True)
    # One Ray Train run for every adapter (the stage's own loop, the model wrapped by `wrap` on each worker)
    trained = train_encoders(cfg, encoder_path, {f"{MERGED_PREFIX}{a}": p for a, p in sets.items()}, out_dir,
                             max_length) if sets else {}
    for adapter, path in sets.items():
        lang, strategy = labels[adapter]
        variant = f"{MERGED_PREFIX}{adapter}"
        state, details = trained[variant]
        meta = {"id": adapter, "language": lang, "strategy": strategy, "base": f"../{BASE_DIR}",
                "base_sha256": base_sha, "encoder": cfg.train.encoder, "data_sha256": file_digest(path),
                "triplets": details["triplets"], "steps": details["steps"], "final_loss": details["final_loss"],
                "lora": lora.model_dump(mode="json"), "metrics": {}}  # provenance: the settings as JSON
        merged = save_adapter(encoder_path, state, lora, join(lora_dir, adapter), meta)
        if lora.export_merged:
            export(encoder_path, merged, cfg, join(out_dir, "models", variant), {**details, "variant": variant}, max_length)
            with open(join(out_dir, "models", variant, "BOOTEMBED.md"), "a") as f:
                f.write(f"\nThis folder is a LoRA adapter (rank {lora.rank}, alpha {lora.alpha}, on "
                        f"{lora.target_modules}) trained on the {lang} triplets"
                        f"{f' of strategy {strategy}' if strategy else ''} only, merged into the encoder with peft's "
                        f"merge_and_unload; the adapter itself is `train/lora/{adapter}/`.\n")
        entries.append({**meta, "folder": adapter, "merged": f"../models/{variant}" if lora.export_merged else None})
        variants[variant] = {**details, "adapter": adapter, "language": lang, "strategy": strategy,
                             "adapter_bytes": folder_bytes(join(lora_dir, adapter))}  # the report sets it beside the model's
    write_registry(lora_dir, {"base": BASE_DIR, "base_sha256": base_sha, "encoder": cfg.train.encoder,
                              "encoder_path": encoder_path, "adapters": entries})
    return variants


# ---------------------------------------------------------------- registry


def write_registry(lora_dir: str, registry: dict) -> None:
    Path(lora_dir, REGISTRY).write_text(json.dumps(registry, indent=2) + "\n")


def read_registry(lora_dir: str) -> dict:
    """The registry of a run's `train/lora/` folder.

    Raises:
        AdapterError: the file is missing or not the registry's JSON."""
    path = Path(lora_dir, REGISTRY)
    try:
        registry = json.loads(path.read_text())
        if not isinstance(registry["adapters"], list) or not isinstance(registry["base"], str):
            raise TypeError("`adapters` must be a list and `base` a folder name")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AdapterError(f"{path}: not a LoRA registry ({type(err).__name__}: {err}); retrain with train.lora set") from None
    return registry


# ---------------------------------------------------------------- checks and reading, for serving


def is_adapter_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(os.path.expanduser(folder), ADAPTER_CONFIG))


def adapter_meta(folder: str) -> dict:
    """bootembed's record of an adapter (META).

    Raises:
        AdapterError: no META, or it is not JSON with a base_sha256."""
    path = Path(os.path.expanduser(folder), META)
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta.get("base_sha256"), str):
            raise KeyError("base_sha256")
    except (OSError, ValueError, AttributeError, KeyError) as err:
        raise AdapterError(f"{path}: {type(err).__name__}: {err}; without it nobody can tell which encoder the adapter "
                           "was trained on, so it is not served (bootembed's train stage writes it)") from None
    return meta


def adapter_base(folder: str) -> str:
    """The base encoder folder an adapter names (META's `base`, relative to the adapter folder)."""
    folder = os.path.abspath(os.path.expanduser(folder))
    return os.path.normpath(os.path.join(folder, adapter_meta(folder).get("base", f"../{BASE_DIR}")))


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is unreadable or truncated (its header names more bytes than it holds), or None."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                return f"header of {length} bytes in a file of {size}"
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end != size:
        return f"truncated or padded: its header describes {8 + length + end} bytes, the file has {size}"
    return None


def adapter_problem(folder: str) -> str | None:
    """Why the adapter folder cannot be served (missing, truncated, unsupported), or None; cheap: no tensor is read."""
    root = Path(os.path.expanduser(folder))
    if not root.is_dir():
        return "no such folder"
    try:
        config = json.loads((root / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as err:
        return f"{ADAPTER_CONFIG}: {type(err).__name__}: {err}"
    if str(config.get("peft_type", "")).upper() != "LORA":
        return f"{ADAPTER_CONFIG}: peft_type {config.get('peft_type')!r}, only LORA is served"
    used = [k for k, off in UNSUPPORTED.items() if config.get(k) not in (off, None, {}, [])]
    if used or config.get("bias", "none") != "none":
        return f"{ADAPTER_CONFIG}: uses {', '.join(used + (['bias'] if config.get('bias', 'none') != 'none' else []))}, " \
               "which the server does not apply; train with plain LoRA"
    weights = root / ADAPTER_WEIGHTS
    if not weights.is_file():
        return f"no {ADAPTER_WEIGHTS}"
    problem = safetensors_problem(weights)
    if problem:
        return f"{ADAPTER_WEIGHTS}: {problem}"
    try:
        adapter_meta(root)
    except AdapterError as err:
        return str(err)
    return None


def read_adapter(folder: str) -> tuple[dict, dict[str, tuple]]:
    """(META, {module path in the encoder: (A [r, in], B [out, r], scale)}) of a peft LoRA adapter folder.

    Raises:
        AdapterError: the folder is missing, truncated or uses a peft option the server does not apply."""
    import torch
    from safetensors.torch import load_file

    problem = adapter_problem(folder)
    if problem:
        raise AdapterError(f"adapter {folder}: {problem}")
    root = Path(os.path.expanduser(folder))
    config = json.loads((root / ADAPTER_CONFIG).read_text())
    tensors = load_file(root / ADAPTER_WEIGHTS)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        # peft writes base_model.model.<module>.lora_A.weight (its adapter name left out)
        module, _, part = key.removeprefix("base_model.model.").rpartition(".lora_")
        pairs.setdefault(module, {})[part.removesuffix(".weight")] = tensor.float()
    if not pairs or any(set(p) != {"A", "B"} for p in pairs.values()):
        raise AdapterError(f"adapter {folder}: {ADAPTER_WEIGHTS} holds no lora_A / lora_B pairs")
    scale = float(config["lora_alpha"]) / float(config["r"])
    return adapter_meta(root), {m: (p["A"], p["B"], scale) for m, p in pairs.items()}


def adapter_evaluations(run_dir: str) -> dict[str, dict]:
    """{adapter id: its evaluation} (scores on its language, Δ vs the base and vs the full fine-tune of the same data),
    from the evaluate stage's adapters.json; {} when evaluate has not scored the adapters the run holds now.

    The numbers stay in the evaluate stage's folder, not in registry.json: a stage writes only its own folder, and a
    train stage that ran again after evaluate (other adapters, same ids) would otherwise show the old adapters' numbers.
    adapters.json names the train stage it scored (its manifest's fingerprint); another one makes it stale."""
    root = os.path.abspath(os.path.expanduser(run_dir))
    try:
        record = json.loads(Path(root, "evaluate", EVALUATIONS).read_text())
        train = json.loads(Path(root, "train", "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("train_fingerprint") != train.get("fingerprint"):
        return {}
    return record.get("adapters") or {}


def registry_with_evaluations(run_dir: str) -> dict:
    """A run's adapter registry with each adapter's `metrics` filled from the evaluate stage (`adapter_evaluations`;
    {} for an adapter it has not scored).

    Raises:
        AdapterError: the run has no readable registry."""
    registry = read_registry(os.path.join(os.path.abspath(os.path.expanduser(run_dir)), "train", LORA_DIR))
    evaluations = adapter_evaluations(run_dir)
    for entry in registry["adapters"]:
        entry["metrics"] = evaluations.get(entry["id"], {})
    return registry


def adapter_evaluation(folder: str, cache: dict[str, dict] | None = None) -> dict | None:
    """The evaluation of the adapter in `folder` when it lies in a run (`<run>/train/lora/<id>`) whose evaluate stage
    scored it, else None. `cache` ({run dir: adapter_evaluations}) reads each run's file once for many adapters."""
    folder = os.path.abspath(os.path.expanduser(folder))
    lora_dir = os.path.dirname(folder)
    train_dir = os.path.dirname(lora_dir)
    if os.path.basename(lora_dir) != LORA_DIR or os.path.basename(train_dir) != "train":
        return None
    run = os.path.dirname(train_dir)
    cache = {} if cache is None else cache
    if run not in cache:
        cache[run] = adapter_evaluations(run)
    try:
        adapter_id = adapter_meta(folder).get("id")
    except AdapterError:
        return None
    return cache[run].get(adapter_id)


def load_merged(folder: str):
    """The adapter in `folder` merged into its base encoder (META's `base`) by peft's merge_and_unload: a
    sentence-transformers model on the CPU computing what the merged export (models/lora-<id>) computes, built in
    memory instead of read from a full-size folder.

    Raises:
        AdapterError: the adapter cannot be read, or its base folder holds other weights than it was trained on."""
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer

    problem = adapter_problem(folder)
    if problem:
        raise AdapterError(f"adapter {folder}: {problem}")
    base = adapter_base(folder)
    model = SentenceTransformer(base, device="cpu")
    if weights_sha256(model[0].auto_model) != adapter_meta(folder)["base_sha256"]:
        raise AdapterError(f"adapter {folder}: its base {base} holds other weights than the adapter was trained on "
                           "(base_sha256 in its bootembed_lora.json)")
    model[0].auto_model = PeftModel.from_pretrained(model[0].auto_model, folder).merge_and_unload()
    return model


def run_adapters(run_dir: str) -> tuple[str, dict[str, str]] | None:
    """(base folder, {adapter id: folder}) of a run trained with train.lora, or None when it has no registry."""
    return folder_adapters(os.path.join(os.path.abspath(os.path.expanduser(run_dir)), "train", LORA_DIR))


def folder_adapters(lora_dir: str) -> tuple[str, dict[str, str]] | None:
    """(base folder, {adapter id: folder}) of the train stage's lora folder, or None when it has no registry."""
    if not os.path.isfile(os.path.join(lora_dir, REGISTRY)):
        return None
    registry = read_registry(lora_dir)
    return (os.path.join(lora_dir, registry["base"]),
            {a["id"]: os.path.join(lora_dir, a["folder"]) for a in registry["adapters"]})

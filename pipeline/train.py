"""Stage `train`: triplets -> a fine-tuned sentence encoder (Ray Train TorchTrainer, DDP).

The loss is InfoNCE over in-batch negatives plus the hard negative, with candidates gathered
from every worker so the effective batch is the global one. Rank 0 checkpoints each epoch; a
rerun of an interrupted run resumes from the last checkpoint. The result is exported as a
sentence-transformers folder that `SentenceTransformer(path)` loads.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import RunConfig
from pipeline.layout import BASELINE
from pipeline.manifest import StageOutput, join

REQUIRED_COLUMNS = {"anchor", "positive", "negative"}
# Triplet files up to this size (uncompressed) are read by the driver and handed to Ray as one table.
IN_MEMORY_TRIPLETS_BYTES = 64 * 1024 * 1024


# ---------------------------------------------------------------- model pieces (pure torch)

def token_states(model, enc: dict, mode: str):
    """The token states a pooling mode averages: the last layer's, or for "avg_first_last" (the paper's, after
    SimCSE) the mean of the first and the last transformer layer's."""
    if mode == "avg_first_last":
        hidden = model(**enc, output_hidden_states=True).hidden_states  # [0] is the embedding layer's output
        return (hidden[1] + hidden[-1]) / 2
    return model(**enc).last_hidden_state


def pool(hidden, attention_mask, mode: str):
    """Token states [n, t, d] -> sentence vectors [n, d]."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [n, t, 1]
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def load_encoder(path: str, freeze_embeddings: bool):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    try:  # DDP rejects parameters that get no gradient, such as BERT's unused pooler
        model = AutoModel.from_pretrained(path, add_pooling_layer=False)
    except TypeError:
        model = AutoModel.from_pretrained(path)
    if freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    return tokenizer, model


def triplet_encoder(model, pooling: str):
    """The encoder as one module whose forward embeds anchors, positives and negatives in a pass each.

    A pass per column pads each to its own longest text: a paragraph anchor no longer pads every short positive and
    negative to its length (about 2x less compute on UDHR). One module call per step keeps DDP's gradient hooks to
    one firing per parameter, as DDP requires.
    """
    import torch

    class TripletEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *encodings: dict):
            return tuple(pool(token_states(self.model, enc, pooling), enc["attention_mask"], pooling)  # [b, d] each
                         for enc in encodings)

    return TripletEncoder()


def embed_triplets(encoder, tokenizer, batch: dict, cfg: dict):
    """Anchors, positives and negatives of a batch -> three [b, d] tensors (`encoder`: a triplet_encoder)."""
    device = next(encoder.parameters()).device
    encodings = []
    for col in ("anchor", "positive", "negative"):
        enc = tokenizer([cfg["prefix"] + str(t) for t in batch[col]], padding=True, truncation=True,
                        max_length=cfg["max_length"], return_tensors="pt")
        encodings.append({k: v.to(device) for k, v in enc.items()})
    return encoder(*encodings)


# ---------------------------------------------------------------- the Ray Train loop

def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from pipeline.losses import gather_ids, gather_with_grad, info_nce, repeated_positives, text_ids

    cfg = config["train"]
    torch.set_num_threads(cfg["torch_threads"] or max(1, math.ceil(cfg["cpus_per_worker"])))
    torch.manual_seed(config["seed"])
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()

    tokenizer, model = load_encoder(config["encoder_path"], cfg["freeze_embeddings"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"])
    total_steps = config["steps_per_epoch"] * cfg["epochs"]
    warmup = int(total_steps * cfg["warmup_ratio"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / max(1, warmup), max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )

    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_epoch, history = state["epoch"] + 1, state["history"]
    encoder = triplet_encoder(model, cfg["pooling"])
    encoder = prepare_model(encoder) if world > 1 else encoder
    encoder.train()

    shard = ray.train.get_dataset_shard("train")
    local_batch = cfg["batch_size"] // world
    for epoch in range(start_epoch, cfg["epochs"]):
        started, seen, losses = time.perf_counter(), 0, []
        for batch in shard.iter_batches(batch_size=local_batch, batch_format="numpy", local_shuffle_buffer_size=4 * local_batch,
                                        local_shuffle_seed=config["seed"] + epoch):
            if len(batch["anchor"]) < 2:
                continue
            anchor, positive, negative = embed_triplets(encoder, tokenizer, batch, cfg)
            positive_ids, negative_ids = text_ids(batch["positive"]), text_ids(batch["negative"])
            candidate_ids = torch.cat([positive_ids, negative_ids])
            if cfg["gather_across_workers"]:
                positive, offset = gather_with_grad(positive)
                negative, _ = gather_with_grad(negative)
                candidate_ids = torch.cat([gather_ids(positive_ids), gather_ids(negative_ids)])
            else:
                offset = 0
            loss = info_nce(anchor, positive, negative, cfg["temperature"], offset,
                            repeated_positives(positive_ids, candidate_ids, offset))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(batch["anchor"])
            losses.append(loss.item())
            if rank == 0 and len(losses) % 10 == 0:
                print(f"[train] epoch {epoch + 1} step {len(losses)}/{config['steps_per_epoch']} loss {loss.item():.4f}", flush=True)
        seconds = time.perf_counter() - started
        metrics = {"epoch": epoch, "loss": sum(losses) / max(1, len(losses)), "steps": len(losses),
                   "samples_per_s": seen * world / max(seconds, 1e-9), "seconds": seconds}
        history.append(metrics)
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "epoch": epoch, "history": history}, os.path.join(d, "state.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


# ---------------------------------------------------------------- export

def export_sentence_transformer(encoder_path: str, state_dict, cfg: RunConfig, out_path: str, details: dict,
                                max_length: int | None = None) -> None:
    """Write a sentence-transformers folder: weights + tokenizer, pooling, normalisation, prompt, model card.

    max_length: the length training used (train.max_length as fitted). The model reads as much as the encoder it was
    trained from (e5-small: 512 tokens), so base and trained encoders see the same text in evaluation and serving.
    """
    import inspect

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Transformer

    from pipeline.models import remember_model_kwargs

    tokenizer, model = load_encoder(encoder_path, freeze_embeddings=False)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    # Trained without a pooler (DDP needs every parameter used): export without one, not a random one.
    no_pooler = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(type(model).__init__).parameters else {}
    if cfg.train.pooling == "avg_first_last":
        model.config.output_hidden_states = True  # sentence-transformers then hands every layer to the pooling
    with tempfile.TemporaryDirectory() as hf_dir:
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        trained = max_length or (cfg.train.max_length if isinstance(cfg.train.max_length, int) else 512)
        transformer = Transformer(hf_dir, max_seq_length=max(trained, encoder_limit(tokenizer, encoder_path)),
                                  model_kwargs=no_pooler)
        # Training put the prefix on every text, so documents get it too (mteb and encode_document use "document").
        prompts = {"query": cfg.train.prefix, "document": cfg.train.prefix} if cfg.train.prefix else {}
        modules = [transformer, *pooling_modules(transformer, cfg.train.pooling), Normalize()]
        st = SentenceTransformer(modules=modules, prompts=prompts,
                                 default_prompt_name="query" if prompts else None)
        st.model_card_data.language = cfg.languages
        st.model_card_data.model_name = f"bootembed encoder for {', '.join(cfg.languages)}"
        st.save(out_path)
    if no_pooler:
        remember_model_kwargs(Path(out_path), no_pooler)  # so loading it does not add a random pooler either
    with open(os.path.join(out_path, "BOOTEMBED.md"), "w") as f:
        f.write(model_card_note(cfg, details))


def pooling_modules(transformer, mode: str) -> list:
    """sentence-transformers' own modules for a pooling mode, so any sentence-transformers install loads the model.

    avg_first_last is WeightedLayerPooling over layers 1..L with weight 1 on the first and the last (0 between),
    followed by mean pooling: the mean of two layers' token states, then the mean over tokens.
    """
    import torch
    from sentence_transformers.sentence_transformer.modules import Pooling, WeightedLayerPooling

    dim = transformer.get_embedding_dimension()
    if mode != "avg_first_last":
        return [Pooling(dim, pooling_mode=mode)]
    layers = transformer.auto_model.config.num_hidden_layers
    weights = torch.zeros(layers)
    weights[[0, -1]] = 1.0
    return [WeightedLayerPooling(dim, num_hidden_layers=layers, layer_start=1, layer_weights=torch.nn.Parameter(weights)),
            Pooling(dim, pooling_mode="mean")]


def model_card_note(cfg: RunConfig, details: dict) -> str:
    variant = details.get("variant", "")
    data = ("human-made cross-lingual NLI triplets of other languages (the human_nli baseline)" if variant == BASELINE else
            f"synthetic triplets for {', '.join(cfg.languages)} (strategy: {variant or ', '.join(cfg.synthesis.strategies)}; "
            f"generator `{cfg.generator.model}`)")
    return (
        f"# bootembed encoder\n\nFine-tuned from `{cfg.train.encoder}` on {data}.\n\nTraining: InfoNCE (temperature {cfg.train.temperature}) over in-batch and hard "
        f"negatives, batch {cfg.train.batch_size}, lr {cfg.train.lr}, {cfg.train.epochs} epoch(s), max length "
        f"{details.get('max_length', cfg.train.max_length)}, {cfg.train.pooling} pooling; {details.get('triplets', '?')} triplets, final loss "
        f"{details.get('final_loss', float('nan')):.4f}.\n\nTexts are prefixed with {cfg.train.prefix!r} "
        f"(the default prompt of this model, applied by `encode`).\n\nLoad: `SentenceTransformer(path)`.\n"
    )


# ---------------------------------------------------------------- the stage

def triplets_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def triplets_dataset(path: str):
    """The triplets as a Ray Dataset.

    Speed only: `read_parquet` makes the worker's first batch wait for a Ray Data read task, which needs a
    worker process that imports pyarrow / Ray Data first. On a 2-core machine that took 6-12 s, inside the
    epoch timer (about 15% of a 256-triplet epoch; the per-step compute equals sentence-transformers').
    Triplet files are small (the filter stage writes them from memory), so the driver reads them and Ray
    gets the table: same rows, same order, one block either way, so the same batches and the same model.
    """
    import ray

    meta = pq.read_metadata(path)
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if size <= IN_MEMORY_TRIPLETS_BYTES:
        return ray.data.from_arrow(pq.read_table(path))
    return ray.data.read_parquet(path)


def human_nli_triplets(size: int, seed: int) -> pa.Table:
    """`size` human-made triplets: the bundled cross-lingual NLI pairs (anchor, English entailed / contradicting hypothesis)."""
    from pipeline.adapters import bundled_pairs

    by_pair: dict[int, dict] = {}
    for p in bundled_pairs():
        t = by_pair.setdefault(p["pair"], {"id": f"xnli-{p['pair']}", "lang": "mul", "strategy": BASELINE})
        t[p["role"]] = p["output"]
        if p["role"] == "positive":
            t["anchor"] = p["anchor"]
    complete = [t for _, t in sorted(by_pair.items()) if {"anchor", "positive", "negative"} <= t.keys()]
    chosen = random.Random(seed).sample(complete, min(size, len(complete)))
    return pa.Table.from_pylist(chosen, schema=pa.schema([(c, pa.string()) for c in ("id", "lang", "strategy", "anchor", "positive", "negative")]))


def training_sets(cfg: RunConfig, triplets_path: str, data_dir: str) -> tuple[dict[str, str], dict[str, str]]:
    """({variant: triplet file}, {variant: why it is not trained}): one variant per strategy, plus the baseline.

    The non-synthetic baseline gets as many triplets as the largest synthetic set, so the comparison is per triplet.
    """
    table = pq.read_table(triplets_path)
    if "strategy" not in table.column_names:  # triplets written before strategies existed: all icl
        table = table.append_column("strategy", pa.array(["icl"] * table.num_rows, pa.string()))
    os.makedirs(data_dir, exist_ok=True)
    sets, skipped = {}, {}
    for strategy in cfg.synthesis.strategies:
        subset = table.filter(pc.equal(table["strategy"], strategy))
        if subset.num_rows < 2:
            skipped[strategy] = (f"{subset.num_rows} triplet(s) after filtering; at least 2 are needed (see "
                                 "filter/dropped.parquet for why rows were dropped)")
            continue
        sets[strategy] = join(data_dir, f"{strategy}.parquet")
        pq.write_table(subset, sets[strategy])
    if not sets:
        raise ValueError(f"train: {triplets_path} holds no strategy with at least 2 triplets ({skipped}). Look at "
                         "filter/dropped.parquet for why rows were dropped, or raise seeds.max_per_language")
    if cfg.train.human_nli_baseline:
        size = max(pq.read_metadata(p).num_rows for p in sets.values())
        sets = {BASELINE: join(data_dir, f"{BASELINE}.parquet"), **sets}
        pq.write_table(human_nli_triplets(size, cfg.seed), sets[BASELINE])
    return sets, skipped


def token_lengths(tokenizer, texts: list[str], prefix: str) -> list[int]:
    """Tokens of each text as training feeds it (prefix included, special tokens counted)."""
    return [len(ids) for ids in tokenizer([prefix + t for t in texts], truncation=False)["input_ids"]]


def encoder_limit(tokenizer, encoder_path: str) -> int:
    """The longest input the encoder takes: its position embeddings, or its tokenizer's limit when that is smaller."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(encoder_path)
    positions = getattr(config, "max_position_embeddings", 512)
    if getattr(config, "model_type", "") in ("xlm-roberta", "roberta", "camembert"):
        positions -= 2  # RoBERTa-style position ids start after the padding index
    declared = tokenizer.model_max_length if tokenizer.model_max_length < 100_000 else positions
    return int(min(positions, declared))


def fit_max_length(cfg: RunConfig, encoder_path: str, triplet_files: list[str]) -> tuple[int, dict]:
    """train.max_length as a number ('auto' = the longest training text, within the encoder's limit), and what share of
    the training texts it cuts: {"max_length", "longest", "truncated_share", "texts"}."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    texts = sorted({str(t) for f in triplet_files for col in REQUIRED_COLUMNS for t in pq.read_table(f, columns=[col])[col].to_pylist()})
    lengths = token_lengths(tokenizer, texts, cfg.train.prefix)
    limit = encoder_limit(tokenizer, encoder_path)
    longest = max(lengths, default=0)
    max_length = min(longest, limit) if cfg.train.max_length == "auto" else min(cfg.train.max_length, limit)
    return max_length, {"max_length": max_length, "longest": longest, "texts": len(texts),
                        "truncated_share": sum(n > max_length for n in lengths) / max(1, len(lengths))}


def train_encoder(cfg: RunConfig, encoder_path: str, triplets: str, out_dir: str, variant: str,
                  max_length: int) -> tuple[dict, dict]:
    """One Ray Train run on one triplet file -> (final model state, details)."""
    import torch
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    rows = pq.read_metadata(triplets).num_rows
    steps_per_epoch = math.ceil(rows / cfg.train.batch_size)
    loop_config = {"train": {**cfg.train.model_dump(mode="json"), "max_length": max_length}, "seed": cfg.seed,
                   "encoder_path": encoder_path, "steps_per_epoch": steps_per_epoch}
    # Same triplets + same train config -> same name, so Ray Train resumes an interrupted run.
    name = f"ray-{variant}-{cfg.section_hash('train', 'seed')}-{triplets_digest(triplets)}"
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        run_config=TrainRunConfig(name=name, storage_path=os.path.abspath(join(out_dir, "checkpoints")),
                                  checkpoint_config=CheckpointConfig(num_to_keep=1),
                                  failure_config=FailureConfig(max_failures=cfg.train.max_failures)),
        datasets={"train": triplets_dataset(triplets)},
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "state.pt"), weights_only=False)
    history = state["history"]  # kept in the checkpoint, so it survives a resumed run
    return state["model"], {"triplets": rows, "steps": steps_per_epoch * cfg.train.epochs, "final_loss": history[-1]["loss"],
                            "max_length": max_length,
                            "epochs": history, "samples_per_s": history[-1]["samples_per_s"]}


def run(cfg: RunConfig, inputs: dict[str, str], out_dir: str) -> StageOutput:
    from pipeline.models import resolve_model

    triplets = inputs["triplets"]
    columns = set(pq.read_schema(triplets).names)
    if not REQUIRED_COLUMNS <= columns:
        raise ValueError(f"train: {triplets} lacks columns {sorted(REQUIRED_COLUMNS - columns)} (it has {sorted(columns)})")
    encoder_path = resolve_model(cfg.train.encoder, cfg.cache_dir)
    sets, skipped = training_sets(cfg, triplets, join(out_dir, "data"))
    max_length, lengths = fit_max_length(cfg, encoder_path, [p for v, p in sets.items() if v != BASELINE])
    if lengths["truncated_share"] > 0:
        print(f"[train] max_length {max_length} cuts {lengths['truncated_share']:.0%} of the training texts (longest: "
              f"{lengths['longest']} tokens); train.max_length: auto fits it to the data", flush=True)
    models_dir, variants = join(out_dir, "models"), {}
    for variant, path in sets.items():
        print(f"[train] {variant}: {pq.read_metadata(path).num_rows} triplets", flush=True)
        state, details = train_encoder(cfg, encoder_path, path, out_dir, variant, max_length)
        export_sentence_transformer(encoder_path, state, cfg, join(models_dir, variant), {**details, "variant": variant},
                                    max_length)
        variants[variant] = details
    return StageOutput(
        outputs={"models": models_dir},
        counts={"models": len(variants), "triplets": sum(v["triplets"] for v in variants.values()),
                "steps": sum(v["steps"] for v in variants.values())},
        details={"variants": variants, "skipped": skipped, "encoder": encoder_path, "lengths": lengths},
    )

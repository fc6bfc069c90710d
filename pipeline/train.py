"""Stage `train`: triplets -> a fine-tuned sentence encoder (Ray Train TorchTrainer, DDP).

The loss is InfoNCE over in-batch negatives plus the hard negative, with candidates gathered
from every worker so the effective batch is the global one (optionally cached: GradCache, for
large batches in small memory). One Ray Train run trains every model of the stage (one per
strategy, plus the baseline) in turn. Rank 0 checkpoints each epoch; a rerun of an interrupted
run resumes from the last checkpoint, skipping finished models. Each model is exported as a
sentence-transformers folder that `SentenceTransformer(path)` loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import RunConfig, TrainConfig
from pipeline.layout import BASELINE
from pipeline.models import load_encoder
from pipeline.manifest import StageOutput, file_digest, join

REQUIRED_COLUMNS = {"anchor", "positive", "negative"}


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


COLUMNS = ("anchor", "positive", "negative")


def tokenize(tokenizer, texts, prefix: str, max_length: int, device) -> dict:
    """Texts -> the encoder's inputs as training feeds it (prefix, truncation at max_length, padded to the longest).

    max_length: the length fitted to the data (fit_max_length), not train.max_length, which may be 'auto'."""
    enc = tokenizer([prefix + str(t) for t in texts], padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def embed_triplets(encoder, tokenizer, batch: dict, cfg: TrainConfig, max_length: int):
    """Anchors, positives and negatives of a batch -> three [b, d] tensors (`encoder`: a triplet_encoder)."""
    device = next(encoder.parameters()).device
    return encoder(*(tokenize(tokenizer, batch[col], cfg.prefix, max_length, device) for col in COLUMNS))


def contrastive_loss(batch: dict, cfg: TrainConfig):
    """(anchor, positive, negative embeddings of this worker's rows) -> InfoNCE over the global batch's candidates,
    with the positive's repeated texts masked out. The same function for the cached and the uncached step."""
    import torch

    from pipeline.losses import gather_ids, gather_with_grad, info_nce, repeated_positives, text_ids

    positive_ids, negative_ids = text_ids(batch["positive"]), text_ids(batch["negative"])

    def loss(anchor, positive, negative):
        candidate_ids = torch.cat([positive_ids, negative_ids])
        if cfg.gather_across_workers:
            positive, offset = gather_with_grad(positive)
            negative, _ = gather_with_grad(negative)
            candidate_ids = torch.cat([gather_ids(positive_ids), gather_ids(negative_ids)])
        else:
            offset = 0
        return info_nce(anchor, positive, negative, cfg.temperature, offset,
                        repeated_positives(positive_ids, candidate_ids, offset))

    return loss


def backward_step(encoder, tokenizer, batch: dict, cfg: TrainConfig, max_length: int):
    """The loss of one batch, backpropagated into the encoder's gradients; returns the loss (a 0-d tensor).

    With train.mini_batch_size, GradCache embeds that many texts at a time (losses.grad_cached_backward): the same
    gradients as one pass over the batch, with the activations of one mini-batch in memory.
    """
    from contextlib import nullcontext

    from pipeline.losses import grad_cached_backward

    loss_fn = contrastive_loss(batch, cfg)
    size = cfg.mini_batch_size
    if not size:
        loss = loss_fn(*embed_triplets(encoder, tokenizer, batch, cfg, max_length))
        loss.backward()
        return loss
    device = next(encoder.parameters()).device
    chunks = [[tokenize(tokenizer, batch[col][i:i + size], cfg.prefix, max_length, device)
               for i in range(0, len(batch[col]), size)] for col in COLUMNS]
    return grad_cached_backward(lambda col, i: encoder(chunks[col][i])[0], [len(c) for c in chunks], loss_fn,
                                no_sync=getattr(encoder, "no_sync", nullcontext))


# ---------------------------------------------------------------- batches (the same on every worker, no Ray)

def epoch_batches(rows: int, batch_size: int, seed: int) -> list:
    """Row indices of each global batch of one epoch: a permutation of all rows drawn by numpy's default_rng(seed),
    cut into batch_size pieces (the last may be smaller).

    This is the order Ray Data's local shuffle (`iter_batches(local_shuffle_seed=seed)`) gave the one-block dataset
    of triplets that training used to stream, so the same seed trains the same model (test_train pins the equality).
    Computed in the worker, it spares each model a Ray Data pipeline (a split-coordinator actor and a streaming
    executor: 3-4 s before the first batch here, 15-30% of a small model's training).
    """
    import numpy as np

    order = np.random.default_rng(seed).permutation(rows)
    return [order[i:i + batch_size] for i in range(0, rows, batch_size)]


def worker_rows(batch_rows, world: int, rank: int):
    """This worker's equal share of a global batch, or None when a share would be under 2 rows (every worker then
    skips the batch together: the gathers of a step need all of them)."""
    share = len(batch_rows) // world
    return batch_rows[rank * share:(rank + 1) * share] if share >= 2 else None


# ---------------------------------------------------------------- the Ray Train loop

def trainable_state(model) -> dict:
    """The parameters training changes (frozen ones, such as a frozen word-embedding matrix, stay the base model's):
    all a checkpoint needs to rebuild the model from the base encoder."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def restore_progress(checkpoint, finished_dir: str) -> dict:
    """{"done": {variant: epoch history}, "current": {"variant", "epoch", "history"} or None, "state": the current
    variant's training state or None} from the last checkpoint; copies the finished variants' weights to
    finished_dir, so later checkpoints carry them on."""
    import torch

    if not checkpoint:
        return {"done": {}, "current": None, "state": None}
    with checkpoint.as_directory() as d:
        with open(os.path.join(d, "progress.json")) as f:
            progress = json.load(f)
        for variant in progress["done"]:
            shutil.copyfile(os.path.join(d, f"final-{variant}.pt"), os.path.join(finished_dir, f"final-{variant}.pt"))
        current = os.path.join(d, "state.pt")
        progress["state"] = torch.load(current, weights_only=False, map_location="cpu") if progress["current"] else None
    return progress


def save_checkpoint(d: str, progress: dict, finished_dir: str, state: dict | None) -> None:
    """Write a checkpoint folder: progress.json, every finished variant's weights, the current variant's state."""
    import torch

    with open(os.path.join(d, "progress.json"), "w") as f:
        json.dump({"done": progress["done"], "current": progress["current"]}, f)
    for variant in progress["done"]:
        finished, copy = os.path.join(finished_dir, f"final-{variant}.pt"), os.path.join(d, f"final-{variant}.pt")
        try:
            os.link(finished, copy)  # both under the temp dir: no bytes copied
        except OSError:
            shutil.copyfile(finished, copy)
    if state is not None:
        torch.save(state, os.path.join(d, "state.pt"))


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker: trains every variant in turn, each from the base encoder with the same seed.

    One worker group for every model of the stage: workers start, import torch and load the encoder once. Rank 0
    checkpoints each epoch; the checkpoint carries the finished variants' weights and the current one's state, so a
    restarted worker group (a killed worker, a rerun) skips what is done and resumes mid-variant.

    config: Ray Train's train_loop_config (a dict, as Ray Train requires): "train" (the TrainConfig section itself),
    "max_length" (fitted to the data), "seed", "encoder_path" and "variants".
    """
    import ray
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from pipeline import cpu_linear

    cfg: TrainConfig = config["train"]
    torch.set_num_threads(cfg.worker_threads)
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()

    tokenizer, model = load_encoder(config["encoder_path"], cfg.freeze_embeddings)
    if cfg.lora:  # --- LoRA hook (pipeline/encoder_lora.py): only the adapters' weights train (each from one init)
        from pipeline import encoder_lora

        torch.manual_seed(config["seed"])  # peft draws lora_A here: the same on every rank, in every run and restart
        model = encoder_lora.wrap(model, cfg.lora)
    cpu_linear.accelerate(model)  # on CPUs where MKL's fp32 product is slow (AMD): 1.45x a step of the demo's batches
    base = trainable_state(model)
    encoder = triplet_encoder(model, cfg.pooling)
    # Wrapped once: the variants reset the same parameters in place, so DDP's hooks stay valid.
    encoder = prepare_model(encoder) if world > 1 else encoder
    encoder.train()

    finished_dir = tempfile.mkdtemp(prefix="bootembed-train-")
    try:
        progress = restore_progress(ray.train.get_checkpoint(), finished_dir)
        steps = StepReport(sum(v["steps_per_epoch"] for v in config["variants"]) * cfg.epochs, rank == 0)
        for variant in config["variants"]:
            if variant["name"] in progress["done"]:
                steps.done += variant["steps_per_epoch"] * cfg.epochs
                continue
            resume = progress["state"] if progress["current"] and progress["current"]["variant"] == variant["name"] else None
            train_variant(variant, encoder, model, tokenizer, base, resume, progress, finished_dir, config, world, rank,
                          steps)
            progress["state"] = None
    finally:
        shutil.rmtree(finished_dir, ignore_errors=True)


class StepReport:
    """The stage's optimizer steps over every variant, printed as `[train] step N/M ...` for the console's bar.

    Printed at most every REPORT_EVERY_S seconds and at each epoch's end: a CPU step takes seconds, a GPU step
    milliseconds, and the log should read the same for both.
    """

    REPORT_EVERY_S = 5.0

    def __init__(self, total: int, prints: bool):
        self.total, self.done, self.prints, self.shown = total, 0, prints, 0.0

    def step(self, text: str, end_of_epoch: bool = False) -> None:
        self.done += 1
        if self.prints and (end_of_epoch or time.monotonic() - self.shown >= self.REPORT_EVERY_S):
            self.shown = time.monotonic()
            # Not print(): on a Ray Train worker print also goes to Train's logger (its print patch), so every line
            # reached the run log twice.
            sys.stdout.write(f"[train] step {self.done}/{self.total} {text}\n")
            sys.stdout.flush()


def train_variant(variant: dict, encoder, model, tokenizer, base: dict, resume: dict | None, progress: dict,
                  finished_dir: str, config: dict, world: int, rank: int, steps: StepReport) -> None:
    """Train one variant's model from the base encoder (or from `resume`), checkpointing each epoch."""
    import ray
    import ray.train
    import torch

    cfg: TrainConfig = config["train"]
    name, steps_per_epoch = variant["name"], variant["steps_per_epoch"]
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            if param_name in base:
                p.copy_(base[param_name])
    torch.manual_seed(config["seed"])  # each variant draws the dropout masks a run of its own would
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(total_steps * cfg.warmup_ratio)
    # Linear warm-up and decay, kept by hand on purpose rather than transformers' get_linear_schedule_with_warmup: that
    # one gives the first step a learning rate of 0 (step / warmup), a lost step of the 6-20 a language often gets.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / max(1, warmup), max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )
    start_epoch, history = 0, []
    if resume:
        model.load_state_dict(resume["model"], strict=False)
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        start_epoch, history = resume["epoch"] + 1, progress["current"]["history"]
    steps.done += start_epoch * steps_per_epoch

    table = ray.get(variant["triplets"])
    columns = {col: table[col].to_pylist() for col in COLUMNS}
    for epoch in range(start_epoch, cfg.epochs):
        started, seen, losses = time.perf_counter(), 0, []
        batches = epoch_batches(table.num_rows, cfg.batch_size, config["seed"] + epoch)
        for b, batch_rows in enumerate(batches):
            rows = worker_rows(batch_rows, world, rank)
            if rows is None:
                steps.done += 1  # skipped by every worker alike: still one of the planned steps
                continue
            batch = {col: [columns[col][i] for i in rows] for col in COLUMNS}
            optimizer.zero_grad()
            loss = backward_step(encoder, tokenizer, batch, cfg, config["max_length"])
            optimizer.step()
            schedule.step()
            seen += len(rows)
            losses.append(loss.item())
            steps.step(f"{name} epoch {epoch + 1}/{cfg.epochs} loss {loss.item():.4f}", end_of_epoch=b == len(batches) - 1)
        seconds = time.perf_counter() - started
        metrics = {"epoch": epoch, "loss": sum(losses) / max(1, len(losses)), "steps": len(losses),
                   "samples_per_s": seen * world / max(seconds, 1e-9), "seconds": seconds}
        history.append(metrics)
        last = epoch == cfg.epochs - 1
        if rank == 0:
            if last:  # the final weights alone: nothing is left to resume
                torch.save(trainable_state(model), os.path.join(finished_dir, f"final-{name}.pt"))
                progress["done"][name], progress["current"], state = history, None, None
            else:
                progress["current"] = {"variant": name, "epoch": epoch, "history": history}
                state = {"model": trainable_state(model), "optimizer": optimizer.state_dict(),
                         "schedule": schedule.state_dict(), "epoch": epoch}
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(d, progress, finished_dir, state)
                ray.train.report({**metrics, "variant": name}, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report({**metrics, "variant": name})


# ---------------------------------------------------------------- export

def export_sentence_transformer(encoder_path: str, state_dict, cfg: RunConfig, out_path: str, details: dict,
                                max_length: int | None = None) -> None:
    """Write a sentence-transformers folder: weights + tokenizer, pooling, normalisation, prompt, model card.

    max_length: the length training used (train.max_length as fitted). The model reads as much as the encoder it was
    trained from (e5-small: 512 tokens), so base and trained encoders see the same text in evaluation and serving.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Transformer
    from transformers import AutoTokenizer

    from pipeline.models import remember_model_kwargs

    trained = max_length or (cfg.train.max_length if isinstance(cfg.train.max_length, int) else 512)
    limit = max(trained, encoder_limit(AutoTokenizer.from_pretrained(encoder_path), encoder_path))
    # The base encoder is loaded once, as the sentence-transformers module, and the trained parameters go straight into
    # it (no intermediate Hugging Face folder: that cost a write and a read of the whole model per export).
    # Trained without a pooler (DDP needs every parameter used): export without one, not a random one.
    try:
        no_pooler = {"add_pooling_layer": False}
        transformer = Transformer(encoder_path, max_seq_length=limit, model_kwargs=no_pooler)
    except TypeError:  # a model class without a pooler option
        no_pooler = {}
        transformer = Transformer(encoder_path, max_seq_length=limit)
    model = transformer.auto_model
    if state_dict is not None:  # the trained parameters; those it lacks (frozen ones) keep the base encoder's weights
        unexpected = model.load_state_dict(state_dict, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"train: the trained weights name parameters {unexpected[:5]} that {encoder_path} lacks")
    if cfg.train.pooling == "avg_first_last":
        model.config.output_hidden_states = True  # sentence-transformers then hands every layer to the pooling
    # Training put the prefix on every text, so documents get it too (mteb and encode_document use "document").
    prompts = {"query": cfg.train.prefix, "document": cfg.train.prefix} if cfg.train.prefix else {}
    modules = [transformer, *pooling_modules(transformer, cfg.train.pooling), Normalize()]
    st = SentenceTransformer(modules=modules, prompts=prompts, default_prompt_name="query" if prompts else None)
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



def human_nli_triplets(size: int, seed: int) -> pa.Table:
    """`size` human-made triplets: the bundled cross-lingual NLI pairs (anchor, English entailed / contradicting hypothesis)."""
    from pipeline.corpus import xnli_pairs

    by_pair: dict[int, dict] = {}
    for p in xnli_pairs():
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


@contextlib.contextmanager
def own_ctrl_c_kept():
    """Ray Train (2.60) installs a Ctrl-C handler for its fit ("gracefully aborting the training run") and leaves it
    installed: afterwards a Ctrl-C, during evaluate or in the next stage of the same process, would only ask a finished
    run to abort. The process's own handler is put back when the fit ends."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def train_encoders(cfg: RunConfig, encoder_path: str, sets: dict[str, str], out_dir: str,
                   max_length: int) -> dict[str, tuple[dict, dict]]:
    """One Ray Train run that trains a model per triplet file in turn -> {variant: (trained parameters, details)}.

    The trained parameters are those training changes (a frozen embedding matrix stays the base encoder's).
    """
    import ray
    import torch
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    tables = {variant: pq.read_table(path, columns=list(COLUMNS)) for variant, path in sets.items()}
    steps = {variant: math.ceil(t.num_rows / cfg.train.batch_size) for variant, t in tables.items()}
    # The tables go through the object store: one copy per node, read by every worker (no shared file system needed).
    variants = [{"name": v, "triplets": ray.put(t), "steps_per_epoch": steps[v]} for v, t in tables.items()]
    # Ray Train wants a dict: the train section travels as itself (pickled to the workers), the values fitted at run
    # time beside it.
    loop_config = {"train": cfg.train, "max_length": max_length, "seed": cfg.seed, "encoder_path": encoder_path,
                   "variants": variants}
    # Same triplets + same train config -> same name, so Ray Train resumes an interrupted run.
    digest = hashlib.sha256(json.dumps({v: file_digest(p) for v, p in sets.items()}).encode()).hexdigest()[:12]
    name = f"ray-{cfg.section_hash('train', 'seed')}-{digest}"
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        run_config=TrainRunConfig(name=name, storage_path=os.path.abspath(join(out_dir, "checkpoints")),
                                  checkpoint_config=CheckpointConfig(num_to_keep=1),
                                  failure_config=FailureConfig(max_failures=cfg.train.max_failures)),
    )
    with own_ctrl_c_kept():
        result = trainer.fit()
    trained = {}
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, "progress.json")) as f:
            done = json.load(f)["done"]  # each variant's epochs, kept in the checkpoint so they survive a resumed run
        for variant, history in done.items():
            state = torch.load(os.path.join(d, f"final-{variant}.pt"), weights_only=True, map_location="cpu")
            trained[variant] = state, {
                "triplets": tables[variant].num_rows, "steps": steps[variant] * cfg.train.epochs,
                "final_loss": history[-1]["loss"], "max_length": max_length, "epochs": history,
                "samples_per_s": history[-1]["samples_per_s"]}
    return trained


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
    lora_cfg = None
    if cfg.train.lora:  # --- LoRA hook (pipeline/encoder_lora.py): adapters per language instead of full fine-tunes
        from pipeline import encoder_lora

        lora_sets, lora_labels, lora_skipped = encoder_lora.training_sets(cfg, triplets, join(out_dir, "data"))
        skipped.update({f"{encoder_lora.MERGED_PREFIX}{a}": why for a, why in lora_skipped.items()})
        if not cfg.train.lora.keep_full_finetune:
            sets = {v: p for v, p in sets.items() if v == BASELINE}
        cfg, lora_cfg = encoder_lora.without_lora(cfg), cfg  # the full fine-tunes below train every weight
    for variant, path in sets.items():
        print(f"[train] {variant}: {pq.read_metadata(path).num_rows} triplets", flush=True)
    models_dir, variants = join(out_dir, "models"), {}
    for variant, (state, details) in (train_encoders(cfg, encoder_path, sets, out_dir, max_length) if sets else {}).items():
        export_sentence_transformer(encoder_path, state, cfg, join(models_dir, variant), {**details, "variant": variant},
                                    max_length)
        variants[variant] = details
    if lora_cfg:  # --- LoRA hook: train (one Ray Train run for all), save and export the adapters, write their registry
        variants.update(encoder_lora.train_adapters(lora_cfg, encoder_path, lora_sets, lora_labels, out_dir, max_length,
                                                    train_encoders, export_sentence_transformer))
    return StageOutput(
        outputs={"models": models_dir, **({"lora": join(out_dir, "lora")} if lora_cfg else {})},
        counts={"models": len(variants), "triplets": sum(v["triplets"] for v in variants.values()),
                "steps": sum(v["steps"] for v in variants.values())},
        details={"variants": variants, "skipped": skipped, "encoder": encoder_path, "lengths": lengths},
    )

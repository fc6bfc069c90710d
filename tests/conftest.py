"""Shared fixtures: one local Ray instance on loopback, tiny and bundled models, run configs."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from pipeline.config import RunConfig, validate_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Bundled models are materialised once per machine, like a user's cache; tests never download.
CACHE_DIR = os.environ.get("BOOTEMBED_TEST_CACHE", os.path.expanduser("~/.cache/bootembed"))


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


METRICS_PORT = free_port()  # where ray_local's node serves Prometheus metrics (Ray's and bootembed's)


@pytest.fixture(scope="session")
def ray_local():
    """A private local Ray instance (never attaches to one a developer left running)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
             _node_ip_address="127.0.0.1", log_to_driver=True, _metrics_export_port=METRICS_PORT)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_url(ray_local) -> str:
    """One Ray Serve instance (controller and HTTP proxy) on a free loopback port, shared by every test that deploys
    an application: each deploys under its own name and route prefix and deletes what it deployed."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="session")
def cache_dir() -> str:
    return CACHE_DIR


def bundled(name: str) -> str:
    """A bundled model's folder, materialised in the shared cache on first use."""
    from pipeline.models import resolve_model

    return resolve_model(f"bundled:{name}", CACHE_DIR)


def random_adapter(base: str, path: str, seed: int, rank: int = 4, alpha: int = 8, lora_b_std: float | None = None) -> str:
    """A LoRA on every linear layer with random non-zero weights (B ~ N(0, lora_b_std) if given), saved at `path`:
    unlike a freshly initialised one, it changes what the model computes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear", init_lora_weights=False))
    if lora_b_std is not None:
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0.0, lora_b_std)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def generator_path() -> str:
    return bundled("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def e5_path() -> str:
    return bundled("multilingual-e5-small")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    return bundled("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory, minilm_path) -> str:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_encoder")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config, add_pooling_layer=False).save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    transformer = models.Transformer(str(root / "hf"), max_seq_length=64)
    pooling = models.Pooling(32, pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()]).save(str(root / "st"))
    return str(root / "st")


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory, generator_path) -> str:
    """A 2-layer, 64-wide Llama with SmolLM2's tokenizer and chat template: adapters train on it in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_generator")
    tokenizer = AutoTokenizer.from_pretrained(generator_path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)


@pytest.fixture
def s3_bucket(monkeypatch) -> str:
    """A fresh bucket on a real S3 API server (moto) on loopback; returns its s3:// URI."""
    import uuid

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # pyarrow reads the endpoint from the environment, as it would for any S3-compatible store.
    for key, value in {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    bucket = f"bootembed-{uuid.uuid4().hex[:8]}"
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?allow_bucket_creation=true")
    fs.create_dir(bucket)
    yield f"s3://{bucket}"
    server.stop()


@pytest.fixture
def make_config(tmp_path, cache_dir):
    """RunConfig factory: a run directory under tmp_path plus any field overrides (nested dicts)."""

    def make(**fields) -> RunConfig:
        data = {"run_dir": str(tmp_path / "run"), "cache_dir": cache_dir, "languages": ["yor", "kha"]}
        for key, value in fields.items():
            if isinstance(value, dict):
                data.setdefault(key, {}).update(value)
            else:
                data[key] = value
        return validate_config(data)

    return make


def random_encoder_adapter(base: str, path: str, seed: int, rank: int = 4, alpha: int = 8, lora_b_std: float = 0.3,
                           trained_on: str | None = None) -> str:
    """A servable LoRA adapter on every linear layer of the sentence-transformers encoder `base`, random non-zero
    weights (B ~ N(0, lora_b_std)), saved at `path` in peft's format with bootembed's record of its base.

    trained_on: the encoder whose weights' hash the record gives (default `base`): another one makes an adapter that
    claims `base` as its folder but was "trained" on something else."""
    import json

    import torch
    from peft import get_peft_model

    from pipeline import encoder_lora
    from pipeline.config import EncoderLoraConfig
    from pipeline.models import load_encoder

    torch.manual_seed(seed)
    _, model = load_encoder(base, freeze_embeddings=False)
    lora = EncoderLoraConfig(rank=rank, alpha=alpha, dropout=0.0, target_modules="all-linear")
    peft_model = get_peft_model(model, encoder_lora.peft_config(lora))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0.0, lora_b_std)
    peft_model.save_pretrained(path)
    meta = {"id": os.path.basename(path), "base": os.path.relpath(base, path), "lora": lora.model_dump(mode="json"),
            "base_sha256": encoder_lora.encoder_sha256(trained_on or base)}
    Path(path, encoder_lora.META).write_text(json.dumps(meta))
    return path


def merged_encoder(base: str, adapter: str, path: str) -> str:
    """`adapter` merged into the sentence-transformers encoder `base` by peft (merge_and_unload), saved at `path`."""
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(base, device="cpu")
    model[0].auto_model = PeftModel.from_pretrained(model[0].auto_model, adapter).merge_and_unload()
    model.save(path)
    return path


# The longest test files, longest first (their summed --durations in .ci/run, 2 processes): started first, each on a
# process of its own, so the end-to-end file does not start late and run alone at the end (it did: 415 s of a 963 s
# suite). Update from the CI log when a file grows.
LONGEST_FILES = ["pipeline/test_run.py", "serve/test_app.py", "pipeline/test_train.py", "pipeline/test_encoder_lora.py",
                 "pipeline/test_jobs.py", "pipeline/test_console.py", "pipeline/test_models.py", "serve/test_cli_serve.py"]


def pytest_configure(config):
    # pytest-xdist's --dist loadfile hands out files with the most tests first unless told to keep the order below.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """The longest files first (LONGEST_FILES), then the other files holding slow tests, then the rest; each file's
    tests still together and in order: with the suite split over processes (`-n 2 --dist loadfile`, .ci/run), the
    longest files start at once instead of leaving one process running alone at the end, and module-scoped fixtures (a
    Ray cluster, a Serve app) start once per file."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item) -> tuple[int, int]:
        name = item.path.relative_to(REPO / "tests").as_posix()
        return (LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES), item.path not in slow_files)

    items.sort(key=rank)

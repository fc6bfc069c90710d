"""`AppArgs`: the arguments of `serve.app.build_app`, the single source of the Serve app's defaults.

Kept free of Ray and torch imports so that `bootembed --help` can show these defaults without starting either.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

API_KEY_ENV = "BOOTEMBED_API_KEY"  # where the app looks for a key unless told another variable


class AppArgs(BaseModel):
    """What `build_app` deploys: `args:` of an application in a Ray Serve config file (configs/serve.yaml)."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, str] = Field(
        min_length=1, description="The served encoders, {name clients send as `model`: sentence-transformers folder, "
        "a Hugging Face hub model id, or a LoRA adapter folder of a run trained with train.lora (served on its base "
        "encoder, one deployment for all adapters of a base)}; relative folders are resolved against the working "
        "directory of the process that builds the app.")
    max_batch_size: int = Field(32, ge=1, description="Most requests one encoder replica encodes as one batch.")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="Seconds a batch waits to fill up once its first "
                                        "request arrived.")
    concurrent_batches: int = Field(2, ge=1, description="Batches one encoder replica encodes at the same time, each "
                                    "in its own thread: while one is tokenised or copied, the other computes.")
    torch_threads: int = Field(1, ge=1, description="Torch threads per batch being encoded (each replica sets it "
                               "itself: Ray does not limit threads to a replica's CPU share).")
    num_replicas: int = Field(1, ge=1, description="Replicas of each encoder deployment (of the one shared deployment "
                              "when multiplexed); a config file's `deployments:` entry can override it, e.g. with "
                              "an autoscaling_config.")
    encoder_cpus: float | None = Field(None, gt=0, description="Ray CPUs each encoder replica reserves; default: all "
                                       "encoder replicas together reserve one, so any number deploys on a small "
                                       "machine instead of waiting forever for CPUs.")
    encoder_gpus: float = Field(0, ge=0, description="GPUs each encoder replica reserves: 1, or a fraction such as "
                                "0.5 for two replicas on one GPU; the replica then encodes on the GPU Ray gives it. "
                                "0: CPU.")
    multiplex_above: int = Field(8, ge=0, description="With more models than this, one multiplexed deployment "
                                 "(`Encoders`) serves them all, each replica loading the models it is asked for; "
                                 "with this many or fewer, each model gets its own deployment (`Encoder-<name>`). "
                                 "0 always multiplexes.")
    max_models_per_replica: int = Field(4, ge=1, description="Models one replica of the multiplexed deployment keeps "
                                        "loaded; the least recently used is dropped to load another.")
    max_adapters_per_replica: int = Field(128, ge=1, description="LoRA adapters one replica keeps loaded (a few MB "
                                          "each, loaded in milliseconds on first use); the least recently used is "
                                          "dropped to load another.")
    lora_base: str | None = Field(None, description="Serve every LoRA adapter among `models` on this base encoder "
                                  "(a sentence-transformers folder) instead of the one each adapter names; an adapter "
                                  "trained on another encoder is then answered with a 400.")
    max_inputs: int = Field(2048, ge=1, description="Most texts in one request (413 beyond), as in OpenAI's API.")
    truncate: bool = Field(True, description="Texts longer than the model reads (its max_seq_length) are truncated; "
                           "false refuses them with a 400 that names them.")
    backend: Literal["torch", "onnx", "openvino"] = Field("torch", description="What computes the vectors on CPU "
        "replicas: the model's torch modules, or its graph exported once to ONNX Runtime or OpenVINO (built on a "
        "replica's first start, kept in export_dir). GPU replicas run torch in fp16. Measured speeds: README, "
        "Throughput.")
    quantize: Literal["none", "int8"] = Field("none", description="int8: int8 weights and activations (torch and "
        "onnx: dynamic quantisation; openvino: static, calibrated on UDHR text): faster on CPU, vectors slightly "
        "off fp32's (each build is checked on fixed texts: smallest cosine at least .95). Speed and retrieval cost "
        "measured: README, Throughput. CPU only.")
    export_dir: str = Field("~/.cache/bootembed/exports", description="Where replicas keep exported models, one folder "
                            "per model content (SHA-256 of its files), backend and quantisation; on each node.")
    api_key_env: str | None = Field(None, description="Environment variable, read when the app is built, holding the "
                                    f"API key that /v1/* requires as a Bearer token. Unset: {API_KEY_ENV} if that is "
                                    "set, else no key. A named variable that is unset or empty is an error.")

    @field_validator("models")
    @classmethod
    def _no_empty_names_or_folders(cls, models: dict[str, str]) -> dict[str, str]:
        empty = [f"{name!r}: {path!r}" for name, path in models.items() if not name.strip() or not path.strip()]
        if empty:
            raise ValueError(f"every model needs a name and a folder; got {', '.join(empty)}")
        return models

    @model_validator(mode="after")
    def _gpus_run_torch(self) -> "AppArgs":
        if self.encoder_gpus and (self.backend != "torch" or self.quantize != "none"):
            chosen = " and ".join(f"`{k}: {v}`" for k, v in (("backend", self.backend), ("quantize", self.quantize))
                                  if v not in ("torch", "none"))
            raise ValueError(f"{chosen} runs on CPU replicas only, but `encoder_gpus` is {self.encoder_gpus}: GPU "
                             "replicas run torch in fp16; set `backend: torch` and `quantize: none`, or `encoder_gpus: 0`")
        return self

"""The run directory's layout: where each stage writes and which encoders a run holds.

Shared by the stages, the CLI and the server, so that none of them reads another stage's internals to find a file.
`models_of_run` answers what `bootembed serve RUN_DIR` serves and `bootembed eval --model RUN_DIR` evaluates.

    <run_dir>/<stage>/manifest.json     every stage
    <run_dir>/train/models/<variant>/   one sentence-transformers folder per trained variant: a synthesis strategy,
                                        or the non-synthetic baseline BASELINE
    <run_dir>/train/lora/<id>/          a LoRA adapter on the encoder (train.lora; pipeline/encoder_lora.py), evaluated
                                        as the variant lora-<id>
"""

from __future__ import annotations

import os
import re

from pipeline import encoder_lora
from pipeline.manifest import join

BASELINE = "human_nli"  # human-made cross-lingual NLI triplets of 14 other languages (TrainConfig.human_nli_baseline)
MODELS_STAGE, MODELS_FOLDER = "train", "models"  # the trained encoders: <run_dir>/train/models/<variant>/


def stage_dir(run_root: str, stage: str) -> str:
    """The folder a stage writes in."""
    return join(run_root, stage)


def models_dir(run_root: str) -> str:
    """The folder holding one sentence-transformers folder per trained variant."""
    return join(run_root, MODELS_STAGE, MODELS_FOLDER)


def is_model_folder(path: str) -> bool:
    """A sentence-transformers folder (it has modules.json)."""
    return os.path.isfile(os.path.join(path, "modules.json"))


def trained_models(models_folder: str, strategies: list[str]) -> dict[str, str]:
    """{variant: folder} of the encoders in `models_folder`, in report order: the non-synthetic baseline, then the
    strategies in the order configured, then any other variant by name."""
    found = {name: join(models_folder, name) for name in sorted(os.listdir(models_folder))
             if is_model_folder(os.path.join(models_folder, name))}
    order = [BASELINE, *strategies]
    return {name: found[name] for name in sorted(found, key=lambda n: order.index(n) if n in order else len(order))}


def lora_encoders(lora_folder: str | None, models_folder: str) -> dict[str, str]:
    """{lora-<id>: adapter folder} of the LoRA adapters in `lora_folder` (a run's train/lora; None: the run has none)
    that have no merged copy in `models_folder` (train.lora.export_merged off): the evaluate stage merges them in
    memory."""
    lora = encoder_lora.folder_adapters(lora_folder) if lora_folder else None
    adapters = {f"{encoder_lora.MERGED_PREFIX}{a}": folder for a, folder in (lora[1] if lora else {}).items()}
    return {name: adapters[name] for name in sorted(adapters) if not is_model_folder(os.path.join(models_folder, name))}


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # `name` or `org/name`, as the hub writes ids


def is_hub_model(source: str) -> bool:
    """Whether `source` names a model on the Hugging Face hub: it is written like a hub id and is no local path."""
    return bool(HUB_ID.fullmatch(source)) and not os.path.exists(os.path.expanduser(source))


def models_of_run(run_dir: str) -> dict[str, str]:
    """{name: folder} of the encoders a run trained, or of one sentence-transformers folder; {id: id} for a hub id.

    One synthesis strategy: the encoder is named after the run directory. Several: `<run>-<strategy>` each.
    The non-synthetic baseline is a yardstick, not a product, and is not served. A source that is no local path but
    is written like a hub model id (`org/name`) is served under that id; build_app checks that the hub has it.

    A run trained with train.lora: each adapter as `<run>/<id>` (`<run>/yor`; served on the run's base encoder,
    evaluated merged into it), never its merged copy (models/lora-<id>, train.lora.export_merged). An adapter folder by
    itself is served under its folder's name.
    """
    root = os.path.abspath(os.path.expanduser(run_dir))
    name = os.path.basename(root)
    if os.path.isfile(os.path.join(root, "modules.json")) or encoder_lora.is_adapter_folder(root):
        return {name: root}
    if is_hub_model(run_dir):
        return {run_dir: run_dir}
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{run_dir}: no such directory (expected a run directory, a sentence-transformers "
                                "folder or a hub model id)")
    lora = encoder_lora.run_adapters(root)
    served_lora = {f"{name}/{adapter}": folder for adapter, folder in (lora[1] if lora else {}).items()}
    trained_dir = models_dir(root)
    trained = sorted(v for v in (os.listdir(trained_dir) if os.path.isdir(trained_dir) else [])
                     if v != BASELINE and not (lora and v.startswith(encoder_lora.MERGED_PREFIX))
                     and is_model_folder(os.path.join(trained_dir, v)))
    if len(trained) == 1:
        return {name: os.path.join(trained_dir, trained[0]), **served_lora}
    if trained or served_lora:
        return {**{f"{name}-{v}": os.path.join(trained_dir, v) for v in trained}, **served_lora}
    raise FileNotFoundError(
        f"{run_dir}: neither a run directory with a trained model (nothing in {trained_dir}/*/modules.json) nor a "
        "sentence-transformers folder (no modules.json); train one with `bootembed run CONFIG` first"
    )

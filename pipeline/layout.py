"""The run directory's layout: where each stage writes and which encoders a run holds.

Shared by the stages, the CLI and the server, so that none of them reads another stage's internals to find a file.

    <run_dir>/<stage>/manifest.json     every stage
    <run_dir>/train/models/<variant>/   one sentence-transformers folder per trained variant: a synthesis strategy,
                                        or the non-synthetic baseline BASELINE
"""

from __future__ import annotations

import os

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

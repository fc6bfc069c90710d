"""Contrastive losses as pure functions of embeddings (no Ray, no model): unit-testable on CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None,
    temperature: float,
    offset: int = 0,
) -> torch.Tensor:
    """Supervised-SimCSE InfoNCE: each anchor must pick its own positive among all candidates.

    Candidates are every positive and every hard negative given (in-batch negatives plus hard
    negatives). With negatives gathered across workers, `positive` / `negative` hold the global
    batch and `offset` is where this worker's anchors start in it.

    Args:
        anchor: [b, d] this worker's anchor embeddings.
        positive: [B, d] positives of the global batch (B >= offset + b).
        negative: [B, d] hard negatives of the global batch, or None.
        temperature: softmax temperature (the paper: 0.05).
        offset: index of this worker's first row in the global batch.
    """
    anchor = F.normalize(anchor, dim=-1)  # [b, d]
    candidates = positive if negative is None else torch.cat([positive, negative])  # [B or 2B, d]
    scores = anchor @ F.normalize(candidates, dim=-1).T / temperature  # [b, B or 2B]
    labels = torch.arange(anchor.shape[0], device=anchor.device) + offset  # [b]
    return F.cross_entropy(scores, labels)


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(all workers' rows concatenated, this worker's offset); gradients flow back to every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(tensor)
    return torch.cat(parts), dist.get_rank() * tensor.shape[0]

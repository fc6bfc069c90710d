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
    same_as_positive: torch.Tensor | None = None,
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
        same_as_positive: [b, B or 2B] True where a candidate other than the anchor's own positive is the same text
            as that positive (parallel data: one English reference for several languages' anchors, a mined negative
            that is another anchor's positive). Such a candidate is not a negative, so it is left out of the softmax.
    """
    anchor = F.normalize(anchor, dim=-1)  # [b, d]
    candidates = positive if negative is None else torch.cat([positive, negative])  # [B or 2B, d]
    scores = anchor @ F.normalize(candidates, dim=-1).T / temperature  # [b, B or 2B]
    labels = torch.arange(anchor.shape[0], device=anchor.device) + offset  # [b]
    if same_as_positive is not None:
        scores = scores.masked_fill(same_as_positive, float("-inf"))
    return F.cross_entropy(scores, labels)


def text_ids(texts) -> torch.Tensor:
    """A stable 63-bit id per text (the same in every worker process, unlike hash()), for finding repeated texts."""
    import hashlib

    return torch.tensor([int.from_bytes(hashlib.blake2b(str(t).encode(), digest_size=8).digest(), "big") >> 1 for t in texts])


def repeated_positives(positive_ids: torch.Tensor, candidate_ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """[b, C] mask for info_nce: candidates with the same text as each anchor's positive, except the positive itself.

    Args:
        positive_ids: [b] text ids of this worker's positives.
        candidate_ids: [C] text ids of every candidate (the global positives, then the global negatives).
        offset: index of this worker's first positive among the candidates.
    """
    mask = candidate_ids[None, :] == positive_ids[:, None]  # [b, C]
    rows = torch.arange(len(positive_ids))
    mask[rows, rows + offset] = False
    return mask


def gather_ids(ids: torch.Tensor) -> torch.Tensor:
    """Every worker's ids concatenated in rank order (no gradient: ids are labels, not activations)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ids
    parts = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, ids)
    return torch.cat(parts)


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(all workers' rows concatenated, this worker's offset); gradients flow back to every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(tensor)
    return torch.cat(parts), dist.get_rank() * tensor.shape[0]

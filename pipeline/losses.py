"""Contrastive losses as pure functions of embeddings (no Ray, no model): unit-testable on CPU."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext

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


# ---------------------------------------------------------------- GradCache (a cached contrastive loss)

def _rng_snapshot() -> tuple:
    """The CPU RNG state and the current GPU's (if one is in use): what dropout draws from."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return torch.get_rng_state(), devices, [torch.cuda.get_rng_state(d) for d in devices]


@contextmanager
def _replayed_rng(cpu_state: torch.Tensor, devices: list, device_states: list):
    """Run the block with the RNG as it was at the snapshot (dropout draws the same masks), then restore the outer
    RNG. (sentence-transformers' RandContext does the same; written out so train workers need not import it.)"""
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(cpu_state)
        for device, state in zip(devices, device_states):
            torch.cuda.set_rng_state(state, device)
        yield


def grad_cached_backward(
    embed_chunk: Callable[[int, int], torch.Tensor],
    chunks_per_column: list[int],
    loss_fn: Callable[..., torch.Tensor],
    no_sync: Callable[[], AbstractContextManager] = nullcontext,
) -> torch.Tensor:
    """GradCache (Gao et al. 2021; sentence-transformers' CachedMultipleNegativesRankingLoss): the gradient of a
    contrastive loss over a large batch with the memory of one mini-batch. Leaves the gradients in the parameters
    (as `loss_fn(...).backward()` over the whole batch would) and returns the loss, detached.

    1. Embed every mini-batch without autograd, keeping each one's RNG state.
    2. Compute the loss on the concatenated embeddings and backpropagate it to the embeddings only.
    3. Embed each mini-batch again, replaying its RNG state (same dropout), and backpropagate the cached embedding
       gradients through it. Gradients accumulate over the mini-batches.

    Args:
        embed_chunk: (column, chunk) -> [n, d] embeddings of that mini-batch of that column (anchor, positive, ...).
        chunks_per_column: how many mini-batches each column has; a column's chunks concatenate in order.
        loss_fn: (column embeddings...) -> scalar loss, the same function an uncached step uses (it may gather
            across workers: its backward then hands each worker the gradient of its own rows).
        no_sync: a context in which backward does not reduce gradients across workers (DDP's `no_sync`). Every
            mini-batch but the last runs in it, so DDP reduces the accumulated gradients once per step.
    """
    chunks = [(column, index) for column, n in enumerate(chunks_per_column) for index in range(n)]
    rng_states, embeddings = [], [[] for _ in chunks_per_column]
    with torch.no_grad():
        for column, index in chunks:
            rng_states.append(_rng_snapshot())
            embeddings[column].append(embed_chunk(column, index))  # [n, d]
    columns = [torch.cat(parts).requires_grad_() for parts in embeddings]  # [b, d] each: leaves of the loss graph
    loss = loss_fn(*columns)
    loss.backward()
    for i, (column, index) in enumerate(chunks):
        start = sum(len(part) for part in embeddings[column][:index])
        rows = slice(start, start + len(embeddings[column][index]))
        with (nullcontext() if i == len(chunks) - 1 else no_sync()), _replayed_rng(*rng_states[i]):
            embed_chunk(column, index).backward(columns[column].grad[rows])
    return loss.detach()

import math

import torch

from pipeline.losses import gather_with_grad, info_nce


def test_aligned_embeddings_give_near_zero_loss_and_random_ones_do_not():
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    aligned = info_nce(x, x.clone(), -x, temperature=0.05)
    shuffled = info_nce(x, x[torch.randperm(8)], None, temperature=0.05)
    assert aligned.item() < 1e-3
    assert shuffled.item() > 1.0


def test_matches_hand_computed_cross_entropy():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    n = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    t = 0.5
    cos = lambda u, v: float(u @ v / (u.norm() * v.norm()))  # noqa: E731
    cands = [p[0], p[1], n[0], n[1]]
    expected = 0.0
    for i in range(2):
        logits = [cos(a[i], c) / t for c in cands]
        expected += -logits[i] + math.log(sum(math.exp(z) for z in logits))
    assert abs(info_nce(a, p, n, t).item() - expected / 2) < 1e-5


def test_offset_points_each_anchor_at_its_row_of_the_global_batch():
    torch.manual_seed(1)
    global_pos = torch.randn(6, 8)
    local_anchor = global_pos[3:6].clone()  # the second of two workers with 3 rows each
    assert info_nce(local_anchor, global_pos, None, 0.05, offset=3).item() < 1e-3
    assert info_nce(local_anchor, global_pos, None, 0.05, offset=0).item() > 1.0


def test_gather_without_a_process_group_is_the_identity():
    x = torch.randn(4, 3)
    gathered, offset = gather_with_grad(x)
    assert gathered is x and offset == 0


def test_a_repeated_positive_is_not_a_negative():
    from pipeline.losses import repeated_positives, text_ids

    # anchors 0 and 2 share one English positive (the same UDHR unit in two languages); anchor 1's mined negative is
    # anchor 0's positive text too.
    torch.manual_seed(0)
    emb = torch.randn(3, 8)
    positive, negative = torch.stack([emb[0], emb[1], emb[0]]), torch.randn(3, 8)
    negative[1] = emb[0]
    anchor = positive + 0.1 * torch.randn(3, 8)  # a well-trained encoder: a copy of the positive is as close as it
    pos_ids = text_ids(["free and equal", "right to life", "free and equal"])
    neg_ids = text_ids(["x", "free and equal", "y"])
    mask = repeated_positives(pos_ids, torch.cat([pos_ids, neg_ids]))
    assert mask.tolist() == [[False, False, True, False, True, False],
                             [False, False, False, False, False, False],
                             [True, False, False, False, True, False]]
    masked = info_nce(anchor, positive, negative, 0.05, same_as_positive=mask)
    # the same loss computed by hand over the candidates that are really negatives
    cands = torch.nn.functional.normalize(torch.cat([positive, negative]), dim=-1)
    a = torch.nn.functional.normalize(anchor, dim=-1)
    expected = 0.0
    for i in range(3):
        keep = [j for j in range(6) if not mask[i, j]]
        logits = a[i] @ cands[keep].T / 0.05
        expected += -logits[keep.index(i)] + torch.logsumexp(logits, 0)
    assert torch.allclose(masked, expected / 3, atol=1e-5)
    unmasked = info_nce(anchor, positive, negative, 0.05)
    assert masked < 0.5 < math.log(2) < unmasked, "a copy of the positive counted as a negative puts a floor of log 2 under the loss"
    assert text_ids(["a"]).tolist() == text_ids(["a"]).tolist() and text_ids(["a"]) != text_ids(["b"])


# ---------------------------------------------------------------- GradCache

def tiny_bert(dropout: float = 0.0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertModel(config, add_pooling_layer=False)


def mean_pooled(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # [n, t, d]
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # [n, d]


def token_columns(rows: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Anchor, positive and negative columns of random token ids with ragged lengths (padding masked out)."""
    g = torch.Generator().manual_seed(seed)
    columns = []
    for _ in range(3):
        ids = torch.randint(1, 50, (rows, 12), generator=g)
        lengths = torch.randint(3, 13, (rows,), generator=g)
        mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
        columns.append((ids * mask, mask))
    return columns


def masked_info_nce(positive_texts: list[str], negative_texts: list[str]):
    from pipeline.losses import repeated_positives, text_ids

    pos_ids, neg_ids = text_ids(positive_texts), text_ids(negative_texts)
    mask = repeated_positives(pos_ids, torch.cat([pos_ids, neg_ids]))
    return lambda a, p, n: info_nce(a, p, n, 0.05, same_as_positive=mask)


def test_the_cached_loss_has_the_uncached_gradients_repeated_positives_masked():
    from pipeline.losses import grad_cached_backward

    model = tiny_bert()
    columns = token_columns(10, seed=3)
    # rows 0, 4 and 7 share one positive text (one English reference for three languages); row 2's negative is it too
    positives = [f"p{i}" for i in range(10)]
    positives[4] = positives[7] = positives[0]
    negatives = [f"n{i}" for i in range(10)]
    negatives[2] = positives[0]
    loss_fn = masked_info_nce(positives, negatives)

    loss = loss_fn(*(mean_pooled(model, ids, mask) for ids, mask in columns))
    loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    mini = 3  # 10 rows: chunks of 3, 3, 3, 1
    cached = grad_cached_backward(lambda col, i: mean_pooled(model, columns[col][0][i * mini:(i + 1) * mini],
                                                             columns[col][1][i * mini:(i + 1) * mini]),
                                  [4, 4, 4], loss_fn)

    assert torch.allclose(cached, loss.detach(), atol=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-5), name
    unmasked = grad_cached_backward(lambda col, i: mean_pooled(model, columns[col][0][i * mini:(i + 1) * mini],
                                                               columns[col][1][i * mini:(i + 1) * mini]),
                                    [4, 4, 4], lambda a, p, n: info_nce(a, p, n, 0.05))
    assert unmasked > cached, "the mask matters here: without it the repeated positives count as negatives"


def test_the_second_pass_replays_the_first_pass_dropout():
    """GradCache applies the gradients of the first pass's embeddings to the second pass: with dropout on, the second
    pass must draw the same masks, or the gradient belongs to other embeddings."""
    from pipeline.losses import grad_cached_backward

    model = tiny_bert(dropout=0.3).train()
    columns = token_columns(6, seed=4)
    seen: dict[tuple[int, int], list[torch.Tensor]] = {}

    def embed(col, i):
        out = mean_pooled(model, columns[col][0][i * 2:(i + 1) * 2], columns[col][1][i * 2:(i + 1) * 2])
        seen.setdefault((col, i), []).append(out.detach().clone())
        return out

    grad_cached_backward(embed, [3, 3, 3], lambda a, p, n: info_nce(a, p, n, 0.05))
    assert all(len(outs) == 2 and torch.equal(outs[0], outs[1]) for outs in seen.values())
    assert not torch.equal(seen[(0, 0)][0], mean_pooled(model.eval(), columns[0][0][:2], columns[0][1][:2])), \
        "dropout was on: the replay is what made the two passes equal"


def _ddp_grads(rank: int, world: int, port: int, mini_batch_size, out_dir: str) -> None:
    """One of two gloo workers: DDP over a small encoder, the InfoNCE step with negatives gathered across workers,
    cached or not; rank 0 saves the reduced gradients."""
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.losses import gather_with_grad, grad_cached_backward

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)

    class Triplet(torch.nn.Module):  # one call embeds every column, as train.triplet_encoder (DDP needs one per step)
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))

        def forward(self, *xs):
            return tuple(self.net(x) for x in xs)

    ddp = DistributedDataParallel(Triplet())
    local = [torch.randn(6, 8, generator=torch.Generator().manual_seed(10 * rank + c)) for c in range(3)]

    def loss_fn(anchor, positive, negative):
        positive, offset = gather_with_grad(positive)
        negative, _ = gather_with_grad(negative)
        return info_nce(anchor, positive, negative, 0.05, offset)

    if mini_batch_size is None:
        loss_fn(*ddp(*local)).backward()
    else:
        grad_cached_backward(lambda col, i: ddp(local[col][i * mini_batch_size:(i + 1) * mini_batch_size])[0],
                             [6 // mini_batch_size] * 3, loss_fn, no_sync=ddp.no_sync)
    if rank == 0:
        torch.save({n: p.grad for n, p in ddp.module.named_parameters()}, os.path.join(out_dir, f"{mini_batch_size}.pt"))
    dist.destroy_process_group()


def test_cached_and_uncached_gradients_agree_across_two_ddp_workers(tmp_path):
    import torch.multiprocessing as mp

    from tests.conftest import free_port

    for mini_batch_size in (None, 2):
        mp.spawn(_ddp_grads, args=(2, free_port(), mini_batch_size, str(tmp_path)), nprocs=2, join=True)
    uncached, cached = torch.load(tmp_path / "None.pt"), torch.load(tmp_path / "2.pt")
    assert uncached.keys() == cached.keys()
    for name in uncached:
        assert torch.allclose(cached[name], uncached[name], atol=1e-5), name
    assert any(g.abs().sum() > 0 for g in cached.values())

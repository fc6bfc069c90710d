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

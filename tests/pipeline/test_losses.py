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

"""The DomainStudio losses against values worked out by hand (METHOD.md formulas)."""
import math

import pytest
import torch

from worker.domainstudio.losses import (domainstudio_terms, haar_high_frequency, high_frequency_mse, loss_terms,
                                        pairwise_similarity_loss)


def test_haar_high_frequency_of_a_2x2_block_is_minus_a_b_c_plus_3d_over_2():
    a, b, c, d = 1.0, 2.0, 4.0, 8.0
    x = torch.tensor([[[[a, b], [c, d]]]])
    out = haar_high_frequency(x)
    assert out.shape == (1, 1, 1, 1)
    assert out.item() == pytest.approx((-a - b - c + 3 * d) / 2)


def test_haar_high_frequency_is_the_sum_of_lh_hl_hh_per_channel_and_block():
    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 2, 4, 4) ** 1.5
    out = haar_high_frequency(x)
    assert out.shape == (2, 2, 2, 2)
    blk = x[1, 1, 2:4, 0:2]  # block at row 1, column 0 of sample 1, channel 1
    lh = (-blk[0, 0] + blk[0, 1] - blk[1, 0] + blk[1, 1]) / 2
    hl = (-blk[0, 0] - blk[0, 1] + blk[1, 0] + blk[1, 1]) / 2
    hh = (blk[0, 0] - blk[0, 1] - blk[1, 0] + blk[1, 1]) / 2
    assert out[1, 1, 1, 0].item() == pytest.approx((lh + hl + hh).item(), rel=1e-6)


def test_haar_high_frequency_of_a_constant_image_is_zero():
    out = haar_high_frequency(torch.full((2, 3, 8, 8), 0.7))
    assert out.shape == (2, 3, 4, 4)
    assert out.abs().max().item() < 1e-6


def _softmax2(x, y):
    return math.exp(x) / (math.exp(x) + math.exp(y)), math.exp(y) / (math.exp(x) + math.exp(y))


def test_pairwise_similarity_loss_matches_hand_worked_three_samples():
    # Three 1x2x2 images, flattened to 4-vectors. Source: e1, e2, (e1+e2)/sqrt2 ->
    # cosines: s12 = 0, s13 = s23 = 1/sqrt2. Adapted: e1, e1, e2 -> a12 = 1, a13 = 0, a23 = 0.
    r = 1 / math.sqrt(2)
    source = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [r, r, 0, 0]]).view(3, 1, 2, 2)
    adapted = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0]]).view(3, 1, 2, 2)
    p_s = [_softmax2(0, r), _softmax2(0, r), _softmax2(r, r)]  # rows: anchor 1 (j=2,3), 2 (1,3), 3 (1,2)
    p_a = [_softmax2(1, 0), _softmax2(1, 0), _softmax2(0, 0)]
    expected = sum(ps * (math.log(ps) - math.log(pa))
                   for row_s, row_a in zip(p_s, p_a) for ps, pa in zip(row_s, row_a)) / 6
    assert pairwise_similarity_loss(adapted, source).item() == pytest.approx(expected, rel=1e-5)
    # The same as torch's KLDivLoss(reduction="mean")(log p_a, p_s), as METHOD.md states.
    kl = torch.nn.KLDivLoss(reduction="mean")(torch.tensor(p_a).log(), torch.tensor(p_s))
    assert pairwise_similarity_loss(adapted, source).item() == pytest.approx(kl.item(), rel=1e-5)


def test_pairwise_similarity_loss_is_zero_for_identical_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 4, generator=g)
    assert pairwise_similarity_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)
    y = torch.randn(5, 3, 4, 4, generator=g)
    assert pairwise_similarity_loss(x, y).item() > 0


def test_pairwise_similarity_loss_needs_two_samples():
    x = torch.randn(1, 1, 2, 2)
    with pytest.raises(ValueError, match="at least 2 samples"):
        pairwise_similarity_loss(x, x)
    with pytest.raises(ValueError, match="at least 2 samples"):
        pairwise_similarity_loss(torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2), num_samples=1)


def test_pairwise_similarity_loss_subsamples_the_same_indices_on_both_sides():
    x = torch.randn(6, 1, 4, 4)
    # Identical sides stay identical under any subset: the loss must stay 0.
    for seed in range(5):
        loss = pairwise_similarity_loss(x, x.clone(), num_samples=3, generator=torch.Generator().manual_seed(seed))
        assert loss.item() == pytest.approx(0.0, abs=1e-7)
    # num_samples larger than the batch is capped at the batch.
    assert pairwise_similarity_loss(x, x.clone(), num_samples=50).item() == pytest.approx(0.0, abs=1e-7)


def test_gradients_reach_only_the_adapted_side():
    adapted = torch.randn(3, 1, 2, 2, requires_grad=True)
    source = torch.randn(3, 1, 2, 2, requires_grad=True)
    pairwise_similarity_loss(adapted, source).backward()
    assert adapted.grad is not None and adapted.grad.abs().sum() > 0
    assert source.grad is None


def test_high_frequency_mse_compares_high_frequencies_only():
    x0 = torch.randn(2, 3, 4, 4)
    assert high_frequency_mse(x0 + 5.0, x0).item() == pytest.approx(0.0, abs=1e-6)  # offset: no HF change
    pred = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[0.0, 0.0], [0.0, 2.0]]]])  # hf = 3*2/2 = 3
    assert high_frequency_mse(pred, target).item() == pytest.approx(9.0)


def test_loss_terms_weighs_and_names_every_term():
    one = torch.tensor(1.0)
    terms = loss_terms(simple=one, img=one * 2, hf=one * 3, hfmse=one * 4, prior=one * 5,
                       l_img=10, l_hf=100, l_hfmse=1000, prior_weight=0.5)
    assert set(terms) == {"simple", "img", "hf", "hfmse", "prior", "total"}
    assert terms["total"].item() == pytest.approx(1 + 20 + 300 + 4000 + 2.5)
    partial = loss_terms(simple=one)
    assert partial["img"].item() == 0 and partial["total"].item() == 1


def test_domainstudio_terms_skip_pairwise_terms_for_a_single_sample():
    x = torch.randn(1, 1, 4, 4)
    terms = domainstudio_terms(x, x, x, num_samples=3)
    assert terms["img"] is None and terms["hf"] is None
    assert terms["hfmse"].item() == pytest.approx(0.0)

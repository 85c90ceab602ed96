"""Metric maths on cases with known answers, and the shipped classifier behind the proxies."""

import numpy as np
import pytest
import torch

from worker.domainstudio import fmnist, metrics
from worker.domainstudio.metric_net import load_metric_net


@pytest.fixture(scope="module")
def proxy():
    return metrics.ProxyMetrics(load_metric_net())


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    # For diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, 1.0])
    s1, s2 = np.diag([1.0, 9.0]), np.diag([4.0, 1.0])
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(4 + 1 + 4)


def test_frechet_distance_handles_non_commuting_covariances():
    a = np.array([[2.0, 1.0], [1.0, 2.0]])
    b = np.diag([1.0, 3.0])
    # Tr((AB)^(1/2)) via eigenvalues of AB (real, positive for PSD A, B).
    expected = np.trace(a) + np.trace(b) - 2 * np.sqrt(np.linalg.eigvals(a @ b).real).sum()
    assert metrics.frechet_distance([0, 0], a, [0, 0], b) == pytest.approx(expected)


def test_fid_of_identical_feature_sets_is_zero_and_grows_with_a_shift():
    f = np.random.default_rng(0).normal(size=(500, 8))
    assert metrics.fid_from_features(f, f) == pytest.approx(0, abs=1e-8)
    assert metrics.fid_from_features(f, f + 1.0) == pytest.approx(8.0, rel=1e-6)


def test_kid_separates_same_and_shifted_distributions():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, _ = metrics.kid_from_features(a, b, subsets=10, subset_size=200)
    shifted, _ = metrics.kid_from_features(a, b + 1.0, subsets=10, subset_size=200)
    assert abs(same) < 0.02 and shifted > 0.5


def test_lpips_distance_by_hand():
    # One pixel, two channels: (3, 4) -> (0.6, 0.8); (1, 0) stays; squared distance 0.16 + 0.64.
    a = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    b = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert metrics.lpips_distance_matrix([a], [b]).item() == pytest.approx(0.8)
    assert metrics.lpips_distance_matrix([a], [b], [torch.tensor([1.0, 0.0])]).item() == pytest.approx(0.16)
    # Two layers add; spatial positions average.
    a2 = torch.cat([a, a], 3)
    b2 = torch.cat([b, a], 3)
    assert metrics.lpips_distance_matrix([a, a2], [b, b2]).item() == pytest.approx(0.8 + 0.4)


def test_intra_cluster_distance_by_hand():
    # Samples 0, 1, 2 nearest shot 0; sample 3 nearest shot 1 (alone); shot 2 gets nobody.
    to_shots = torch.tensor([[0.1, 0.9, 0.9], [0.2, 0.8, 0.9], [0.0, 0.5, 0.9], [0.9, 0.1, 0.9]])
    pairwise = torch.tensor([[0.0, 0.3, 0.6, 1.0], [0.3, 0.0, 0.9, 1.0],
                             [0.6, 0.9, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    out = metrics.intra_cluster_distance(to_shots, pairwise)
    assert out["cluster_sizes"] == [3, 1, 0] and out["sparse_clusters"] == 2
    assert out["intra_lpips"] == pytest.approx((0.3 + 0.6 + 0.9) / 3 / 3)


def test_shipped_classifier_is_accurate():
    images, labels = fmnist.load_split("t10k")
    net = load_metric_net()
    from worker.domainstudio.metric_net import accuracy
    assert accuracy(net, fmnist.to_tensor(images[:1000]), torch.from_numpy(labels[:1000])) > 0.88


def test_proxy_fid_of_identical_sets_is_zero(proxy):
    x = fmnist.class_images(7, ("t10k",))[:300]
    assert proxy.fid(x, x) == pytest.approx(0, abs=1e-3)
    assert proxy.fid(x, fmnist.class_images(1, ("t10k",))[:300]) > 10


def test_proxy_intra_lpips_is_zero_for_copies_of_the_shots(proxy):
    shots, _ = fmnist.draw_shots(7, 5, seed=0)
    copies = shots.repeat(4, 1, 1, 1)  # every shot's cluster holds 4 identical images
    out = proxy.intra_lpips(copies, shots)
    assert out["cluster_sizes"] == [4] * 5
    assert out["intra_lpips"] == pytest.approx(0, abs=1e-6)


def test_proxy_intra_lpips_is_positive_for_distinct_images(proxy):
    shots, _ = fmnist.draw_shots(7, 5, seed=0)
    others = fmnist.class_images(7, ("t10k",))[:200]
    out = proxy.evaluate(others, others, shots)
    assert out["proxy_intra_lpips"] > 0.05 and sum(out["proxy_cluster_sizes"]) == 200
    assert out["proxy_fid"] == pytest.approx(0, abs=1e-3)

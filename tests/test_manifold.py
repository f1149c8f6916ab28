"""Sample precision and recall (Kynkäänniemi et al. 2019) on features whose answer is known."""

from __future__ import annotations

import pytest
import torch

from atlas_gan.metrics.manifold import neighbour_radii, precision_recall, precision_recall_text, share_inside


def test_radii_reach_the_kth_nearest_other_point():
    points = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert neighbour_radii(points, 1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert neighbour_radii(points, 2).tolist() == [3.0, 2.0, 3.0, 5.0]
    with pytest.raises(ValueError, match="need more than 4 points"):
        neighbour_radii(points, 4)


def test_a_point_on_a_ball_edge_is_inside_and_one_beyond_is_not():
    centres, radii = torch.tensor([[0.0, 0.0]]), torch.tensor([1.0])
    assert share_inside(torch.tensor([[0.0, 1.0], [0.0, 1.5]]), centres, radii) == 0.5


def test_samples_equal_to_the_real_set_score_one_and_far_away_samples_zero():
    real = torch.randn(200, 64, generator=torch.Generator().manual_seed(0))
    same = precision_recall(real, real.clone(), k=3)
    assert (same.precision, same.recall, same.k, same.n) == (1.0, 1.0, 3, 200)
    far = precision_recall(real, real + 100.0, k=3)
    assert far.precision == 0.0 and far.recall == 0.0


def test_a_collapsed_generator_is_precise_but_recalls_almost_nothing():
    generator = torch.Generator().manual_seed(1)
    real = torch.randn(300, 32, generator=generator)
    collapsed = real[7] + 1e-3 * torch.randn(300, 32, generator=generator)  # one real tile drawn again and again
    scores = precision_recall(real, collapsed, k=3)
    assert scores.precision == 1.0 and scores.recall <= 2 / 300


def test_two_draws_of_one_distribution_score_alike_and_a_narrower_one_loses_recall():
    generator = torch.Generator().manual_seed(2)
    real, other = torch.randn(500, 16, generator=generator), torch.randn(500, 16, generator=generator)
    alike = precision_recall(real, other, k=3)
    assert 0.6 < alike.precision < 1.0 and 0.6 < alike.recall < 1.0
    narrow = precision_recall(real, 0.5 * other, k=3)  # samples from the dense middle of the real distribution
    assert narrow.precision > alike.precision and narrow.recall < alike.recall - 0.3


def test_large_sets_are_scored_on_a_seeded_subset_of_equal_size():
    generator = torch.Generator().manual_seed(3)
    real, fake = torch.randn(300, 8, generator=generator), torch.randn(120, 8, generator=generator)
    capped = precision_recall(real, fake, k=3, limit=50, seed=5)
    assert capped.n == 50 and capped == precision_recall(real, fake, k=3, limit=50, seed=5)
    assert precision_recall(real, fake, k=3).n == 120  # the smaller side sets N
    assert precision_recall(real[:3], fake, k=3) is None  # no point has a 3rd neighbour among 3


def test_the_summary_line_names_both_sides_and_says_when_a_side_is_missing():
    scores = {"sample_precision": 0.25, "sample_recall": 0.125, "pr_neighbours": 3, "pr_n": 256}
    with_floor = precision_recall_text({**scores, "floor_precision": 0.78, "floor_recall": 0.79})
    assert "precision 0.250, recall 0.125 (k 3, N 256)" in with_floor and "precision 0.780" in with_floor
    assert "n/a (too few tiles outside the reference)" in precision_recall_text({**scores, "floor_precision": None})
    assert "n/a" in precision_recall_text({"sample_precision": None, "pr_n": 3, "pr_neighbours": 3})

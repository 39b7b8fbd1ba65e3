import math

import pytest
import torch

from vla_pipeline.evaluation import EpisodeResult, build_metrics
from vla_pipeline.stats import wilson_interval
from vla_pipeline.training.behaviour_cloning import masked_chunk_loss


def test_masked_mse_ignores_padded_steps():
    mean = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [100.0, 100.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # step 0: 1 + 1 = 2; step 1: 4; padded step ignored -> (2 + 4) / 2
    assert masked_chunk_loss(mean, torch.zeros(3, 2), target, mask, "mse").item() == pytest.approx(3.0)


def test_masked_nll_matches_gaussian_formula():
    mean, target = torch.zeros(1, 1, 1), torch.ones(1, 1, 1)
    log_std = torch.full((1, 1), math.log(2.0))
    expected = 0.5 * 1 / 4 + math.log(2.0) + 0.5 * math.log(2 * math.pi)
    assert masked_chunk_loss(mean, log_std, target, torch.ones(1, 1), "nll").item() == pytest.approx(expected)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(45, 50)
    assert lo == pytest.approx(0.7864, abs=1e-3) and hi == pytest.approx(0.9565, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0


def test_metrics_average_over_tasks_and_count_failures_at_the_horizon():
    results = [EpisodeResult("a", 9, 40, "test", 0, True, 20, 20), EpisodeResult("a", 9, 41, "test", 1, False, -1, 50),
               EpisodeResult("b", 9, 40, "test", 2, True, 40, 40), EpisodeResult("b", 9, 42, "test", 3, True, 30, 30),
               EpisodeResult("a", 0, 1, "train", 3, True, 30, 30), EpisodeResult("b", 0, 1, "train", 3, False, -1, 100)]
    m = build_metrics(results, ["a", "b"], horizon=100, header={})
    assert m["splits"] == ["test", "train"] and "validation" not in m
    assert m["tasks"]["a"]["test"]["success"] == 0.5
    assert m["tasks"]["a"]["test"]["episode_length"] == (20 + 100) / 2
    assert m["test"]["success"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["test"]["success_ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    assert m["test"]["steps_to_success"] == pytest.approx((20 + 35) / 2)
    assert m["train"]["success"] == 0.5 and m["train"]["episodes"] == 2

"""Deflated Sharpe ratio and probability of backtest overfitting, checked against the papers'
worked example and hand calculations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tsconv.evaluate.selection import (
    deflated_sharpe,
    expected_max_sharpe,
    pbo_cscv,
    probabilistic_sharpe,
)


def test_deflated_sharpe_reproduces_bailey_and_lopez_de_prado_2014():
    """Their numerical example: 100 trials whose annualised Sharpe ratios have variance 1/2,
    the selected one 2.5 annualised over 1,250 daily bars with skewness -3 and kurtosis 10.
    Per bar: V = 0.5 / 250, so SR0 = sqrt(0.002) (0.4228 x 2.3263 + 0.5772 x 2.6817) = 0.1132;
    SR = 2.5 / sqrt(250) = 0.1581; z = (0.1581 - 0.1132) sqrt(1249) / sqrt(1 + 3 x 0.1581 +
    9/4 x 0.1581^2) = 1.2835; DSR = Phi(1.2835) = 0.9004."""
    sr0 = expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    dsr = probabilistic_sharpe(2.5 / math.sqrt(250), sr0, 1250, -3.0, 10.0)
    assert dsr == pytest.approx(0.9004, abs=5e-4)


def test_probabilistic_sharpe_by_hand():
    # normal returns (skew 0, kurtosis 3), SR 0.1 per bar against 0 over 101 bars:
    # z = 0.1 x 10 / sqrt(1 + 0.5 x 0.01) = 0.99751, Phi(z) = 0.84073
    assert probabilistic_sharpe(0.1, 0.0, 101, 0.0, 3.0) == pytest.approx(0.84073, abs=1e-4)
    assert probabilistic_sharpe(0.1, 0.1, 101, 0.0, 3.0) == pytest.approx(0.5)


def test_deflated_sharpe_of_the_luckiest_noise_trial_is_not_significant():
    rng = np.random.default_rng(0)
    trials = rng.normal(0, 0.01, (1000, 50))
    srs = trials.mean(0) / trials.std(0, ddof=1)
    best = int(np.argmax(srs))
    out = deflated_sharpe(trials[:, best], srs)
    assert out["sharpe"] > 0 and out["trials"] == 50
    assert out["sharpe"] < out["expected_max_sharpe"] * 1.5  # the best is about what luck gives
    assert out["dsr"] < 0.95
    # a trial with real skill stands out against the same noise
    skilled = rng.normal(0.004, 0.01, 1000)  # 0.4 a bar: skill, not the luck of 50 draws
    srs2 = np.append(srs, skilled.mean() / skilled.std(ddof=1))
    assert deflated_sharpe(skilled, srs2)["dsr"] > 0.99


def test_pbo_by_hand_two_trials_two_blocks():
    # trial 0 wins the first half and loses the second; trial 1 the reverse; C(2, 1) = 2
    # splits, and in both the in-sample best is the out-of-sample worst: rank 1 of 2,
    # w = 1/3, logit log(1/2) < 0, PBO = 1
    up, down = [0.02, 0.01, 0.03, 0.02], [-0.01, -0.02, -0.01, -0.03]
    flip = np.array([up + down, down + up]).T
    out = pbo_cscv(flip, blocks=2)
    assert out["splits"] == 2 and out["pbo"] == 1.0
    assert out["logits"] == pytest.approx([math.log(0.5)] * 2)
    # trial 0 better in both halves: rank 2 of 2, w = 2/3, logit log 2 > 0, PBO = 0
    steady = np.array([up + up, down + down]).T
    out = pbo_cscv(steady, blocks=2)
    assert out["pbo"] == 0.0 and out["logits"] == pytest.approx([math.log(2)] * 2)


def test_pbo_gives_tied_trials_their_middle_rank():
    # trials 1 and 2 never trade (Sharpe 0). Split 1: trial 0 is best on the first half and
    # worst on the second: rank 1 of 3, w = 1/4, logit -log 3. Split 2: on the second half
    # the flat trials are best (argmax takes trial 1); on the first, trial 0 beats both and
    # trial 1 ties trial 2 for ranks 1 and 2: rank 1.5, w = 1.5/4, logit log(3/5).
    up, down = [0.02, 0.01, 0.03, 0.02], [-0.01, -0.02, -0.01, -0.03]
    flat = [0.0] * 8
    out = pbo_cscv(np.array([up + down, flat, flat]).T, blocks=2)
    assert out["logits"] == pytest.approx([-math.log(3), math.log(3 / 5)])
    # three identical strategies: the selected one shares rank 2 of 3, w = 1/2, logit 0
    same = np.array([up + down] * 3).T
    out = pbo_cscv(same, blocks=2)
    assert out["logits"] == pytest.approx([0.0, 0.0]) and out["pbo"] == 1.0


def test_pbo_is_about_one_half_on_noise_and_low_with_a_real_edge():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.01, (800, 30))
    out = pbo_cscv(noise, blocks=8)
    assert out["splits"] == 70 and 0.25 <= out["pbo"] <= 0.75
    edge = noise.copy()
    edge[:, 7] += 0.004  # one trial with a Sharpe ratio of 0.4 a bar
    assert pbo_cscv(edge, blocks=8)["pbo"] <= 0.05
    with pytest.raises(ValueError, match="even"):
        pbo_cscv(noise, blocks=5)

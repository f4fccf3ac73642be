"""How much of a model search's best result is luck: the deflated Sharpe ratio and the
probability of backtest overfitting. Pure functions of the trials' returns, for `tsconv sweep`.

- Deflated Sharpe ratio (Bailey and Lopez de Prado, 2014): the probability that the selected
  trial's true Sharpe ratio exceeds the largest one expected from N skill-less trials, given the
  variance of the trials' Sharpe ratios and the skewness and kurtosis of its returns.
- Probability of backtest overfitting (Bailey, Borwein, Lopez de Prado and Zhu, 2015), by
  combinatorially symmetric cross-validation: split the bars into S blocks, take every half of
  them as the in-sample set, pick the trial that is best in sample, and count how often it
  ranks below the median of the trials out of sample.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri  # the normal CDF and its inverse; scipy.stats is slow

EULER_GAMMA = 0.5772156649015329


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """The expected maximum of n_trials Sharpe ratios of zero mean and the given variance
    (per bar): sqrt(V) ((1 - g) z(1 - 1/N) + g z(1 - 1/(N e))), g Euler's constant."""
    if n_trials < 2 or sharpe_variance <= 0:
        return 0.0
    z1 = ndtri(1 - 1 / n_trials)
    z2 = ndtri(1 - 1 / (n_trials * math.e))
    return float(math.sqrt(sharpe_variance) * ((1 - EULER_GAMMA) * z1 + EULER_GAMMA * z2))


def probabilistic_sharpe(
    sharpe: float, benchmark: float, n: int, skew: float, kurtosis: float
) -> float:
    """P(true Sharpe > benchmark) for an estimate from n bars (per-bar ratios; kurtosis not in
    excess): Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - skew SR + (kurtosis - 1) / 4 SR^2))."""
    spread = 1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe**2
    if n < 2 or spread <= 0:
        return math.nan
    return float(ndtr((sharpe - benchmark) * math.sqrt(n - 1) / math.sqrt(spread)))


def deflated_sharpe(returns: np.ndarray, trial_sharpes: np.ndarray) -> dict[str, Any]:
    """The deflated Sharpe ratio of the selected trial's per-bar `returns`, against the
    per-bar Sharpe ratios of all `trial_sharpes` (the selected one included)."""
    r = np.asarray(returns, float)
    srs = np.asarray(trial_sharpes, float)
    sd = r.std(ddof=1)
    sharpe = float(r.mean() / sd) if sd > 0 else math.nan
    centred = r - r.mean()
    m2 = float(np.mean(centred**2))
    skew = float(np.mean(centred**3) / m2**1.5) if m2 > 0 else 0.0
    kurt = float(np.mean(centred**4) / m2**2) if m2 > 0 else 3.0
    var = float(srs.var(ddof=1)) if len(srs) > 1 else 0.0
    benchmark = expected_max_sharpe(len(srs), var)
    return {
        "sharpe": sharpe,
        "trials": len(srs),
        "sharpe_variance": var,
        "expected_max_sharpe": benchmark,
        "skew": skew,
        "kurtosis": kurt,
        "dsr": probabilistic_sharpe(sharpe, benchmark, len(r), skew, kurt),
    }


def sharpe_columns(block: np.ndarray) -> np.ndarray:
    sd = block.std(axis=0, ddof=1)
    return np.divide(block.mean(axis=0), sd, out=np.zeros(block.shape[1]), where=sd > 0)


def _mean_columns(block: np.ndarray) -> np.ndarray:
    return block.mean(axis=0)


STATISTICS = {"sharpe": sharpe_columns, "mean": _mean_columns}


def pbo_cscv(returns: np.ndarray, blocks: int = 16, statistic: str = "sharpe") -> dict[str, Any]:
    """Probability of backtest overfitting of selecting the best of the trials (columns of
    `returns`, bars in rows) by Sharpe ratio (or by the mean, for per-bar performance such as
    a loss reduction), over all C(blocks, blocks/2) splits. For each
    split: the in-sample best trial's out-of-sample rank r among N (1 = worst; ties share their
    middle rank), its relative
    rank w = r / (N + 1) and logit l = log(w / (1 - w)); PBO is the share of splits with l <= 0
    (the in-sample best at or below the out-of-sample median)."""
    m = np.asarray(returns, float)
    if blocks % 2 or blocks < 2:
        raise ValueError(f"blocks must be even and at least 2, got {blocks}")
    n_bars, n_trials = m.shape
    if n_trials < 2 or n_bars < 2 * blocks:
        return {"pbo": math.nan, "splits": 0, "logits": []}
    score = STATISTICS[statistic]
    parts = np.array_split(np.arange(n_bars), blocks)
    logits = []
    for chosen in itertools.combinations(range(blocks), blocks // 2):
        ins = np.concatenate([parts[i] for i in chosen])
        outs = np.concatenate([parts[i] for i in range(blocks) if i not in chosen])
        best = int(np.argmax(score(m[ins])))
        oos = score(m[outs])
        # trials tied with the selected one (the same strategy, or several never in the
        # market) share the middle of their ranks
        rank = 1 + np.sum(oos < oos[best]) + (np.sum(oos == oos[best]) - 1) / 2
        w = rank / (n_trials + 1)
        logits.append(math.log(w / (1 - w)))
    lam = np.array(logits)
    return {"pbo": float(np.mean(lam <= 0)), "splits": len(lam), "logits": lam.tolist()}

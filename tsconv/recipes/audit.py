"""`tsconv audit`: check a user's own config and data for look-ahead before trusting a backtest.

Findings come in two kinds.

- **leak** (exit 3), proven:
  - pipeline causality: the features, targets, fold scalers and the first folds' predictions
    dated at or before a cut date are rebuilt with every bar after the cut perturbed, and
    separately removed (the ticker's bars, its own columns and every covariate); anything
    that changes read the future. This is the test tsconv's suite runs, on the user's setup.
  - a column that contains the future: a feature whose same-bar correlation with the
    next-step target is at least 0.5 and more than twice its correlation with any of the last
    five returns already realised. Information known at a close does not predict the next
    return that well; a column shifted from the future does, while an autoregressive series
    explains itself by its past.
- **smell** (exit 4), worth a look: a same-bar correlation of at least 0.3 with the next-step
  target; a covariate dated a bar early that the `next_open` rule holds back (its value dated d
  follows the tickers' return from d to the next bar, not the one ending at d); a one-bar move of an unadjusted price series by a split's ratio (1/2, 1/3, 2, ...,
  within 5%); a one-bar move of any price series by 50 times or more (units changed, cents
  and dollars or thousands; `tsconv backtest` warns of it too); a stretch of five or more identical
  bars (stale or forward-filled data); a covariate whose calendar leaves a ticker's bar further
  than its fill limit from its last value.

Clean: exit 0. The findings are returned as a dict (`tsconv audit` writes it as JSON).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from tsconv.config import Config
from tsconv.data import covariates
from tsconv.data.validate import jump_words, price_jumps
from tsconv.errors import UsageError
from tsconv.recipes.prepare import Prepared, fit_scalers, known_rows, prepare, split_train_val
from tsconv.recipes.walkforward import fold_spans, make_folds, run_fold

LEAK_CORRELATION = 0.5
SMELL_CORRELATION = 0.3
PAST_LAGS = 5
SPLIT_RATIOS = (2.0, 3.0, 4.0, 5.0, 10.0, 1.5, 20.0)
STALE_BARS = 5
PRICES = ["open", "high", "low", "close", "adj_close"]


@dataclass
class Finding:
    kind: str  # leak | smell
    check: str  # causality | future_column | correlation | split | jump | stale | calendar
    what: str  # the feature, column or file
    where: str  # ticker and date
    detail: str

    def line(self) -> str:
        return f"{self.kind}: {self.what}: {self.where}: {self.detail}"


def run_audit(cfg: Config, folds: int = 2, cut: pd.Timestamp | None = None) -> dict[str, Any]:
    """Every check on `cfg`'s data; returns the cut, what was checked and the findings."""
    from tsconv.data.load import load_frames

    frames = load_frames(cfg.data)
    sources = covariates.load_sources(cfg)
    findings = [*_data_smells(cfg, frames, sources)]
    gaps = _calendar_gaps(cfg, frames, sources)
    findings += gaps
    checked: dict[str, Any] = {"tickers": sorted(frames), "covariates": list(sources)}
    if gaps:
        checked["pipeline"] = "not checked: the covariate gaps above stop any build"
    else:
        prep = prepare(cfg, frames, sources)
        findings += _correlations(prep)
        findings += _stamps(cfg, frames, sources)
        causal, info = _causality(prep, frames, sources, folds, cut)
        findings += causal
        checked.update(info)
    leaks = [f for f in findings if f.kind == "leak"]
    smells = [f for f in findings if f.kind == "smell"]
    return {
        "verdict": "leak" if leaks else "smells" if smells else "clean",
        "exit_code": 3 if leaks else 4 if smells else 0,
        "checked": checked,
        "leaks": len(leaks),
        "smells": len(smells),
        "findings": [asdict(f) | {"line": f.line()} for f in findings],
    }


# --------------------------------------------------------------------------- causality


def perturbed(frames: dict[str, pd.DataFrame], cut: pd.Timestamp, seed: int = 0):
    """Every bar after `cut` changed: prices by one random factor a bar (OHLC stay
    consistent), volume by another, any other column by noise of its own scale."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, f in frames.items():
        g = f.copy()
        later = g.index > cut
        n = int(later.sum())
        if n:
            prices = [c for c in PRICES if c in g]
            g.loc[later, prices] = g.loc[later, prices].mul(np.exp(rng.normal(0, 0.05, n)), axis=0)
            for col in [c for c in g.columns if c not in prices]:
                scale = float(np.nanstd(g[col].to_numpy())) or 1.0
                if col == "volume":
                    g.loc[later, col] = g.loc[later, col] * np.exp(rng.normal(0, 0.3, n))
                else:
                    g.loc[later, col] = g.loc[later, col] + rng.normal(0, scale, n)
        out[name] = g
    return out


def truncated(frames: dict[str, pd.DataFrame], cut: pd.Timestamp) -> dict[str, pd.DataFrame]:
    return {name: f[f.index <= cut] for name, f in frames.items()}


def _causality(prep: Prepared, frames, sources, folds: int, cut) -> tuple[list[Finding], dict]:
    audited = make_folds(prep)[:folds]
    if cut is None:  # the middle of the last audited fold's test span
        last = audited[-1]
        span = prep.calendar[(prep.calendar >= last.test_start) & (prep.calendar < last.test_end)]
        cut = span[len(span) // 2]
    cut = pd.Timestamp(cut)
    first, last = audited[0].test_start, prep.calendar[-1]
    if not first <= cut < last:
        # after the data nothing can change; before the first test date no prediction is checked
        raise UsageError(
            f"--cut {cut.date()}: outside the audited folds; pick a date from {first.date()} "
            f"(the first test date) to before {last.date()} (the last bar)"
        )
    base = _fingerprint(prep, audited, cut)
    findings = []
    for variant, (f, s) in {
        "perturbed": (perturbed(frames, cut), perturbed(sources, cut, seed=1)),
        "removed": (truncated(frames, cut), truncated(sources, cut)),
    }.items():
        other = _fingerprint(prepare(prep.cfg, f, s), audited, cut)
        findings += _differences(base, other, variant, cut)
    info = {
        "cut": str(cut.date()),
        "folds": len(audited),
        "pipeline": f"features, targets, scalers and predictions of {len(audited)} fold(s) "
        f"dated up to {cut.date()}, with the later bars perturbed and removed",
    }
    return findings, info


def _fingerprint(prep: Prepared, folds, cut: pd.Timestamp) -> dict[str, Any]:
    """What must not change when the bars after `cut` do: per ticker the features and the
    targets realised by `cut`, each fold's scaler statistics, and the predictions (model and
    baselines) dated up to `cut`."""
    h = prep.cfg.target.horizon
    out: dict[str, Any] = {"x": {}, "y": {}, "scaler": {}, "pred": []}
    for t, td in prep.data.items():
        upto = int(td.dates.searchsorted(cut, side="right"))
        out["x"][t] = pd.DataFrame(td.x[:upto], index=td.dates[:upto], columns=td.feature_names)
        realised = max(0, min(upto - h, known_rows(td)))
        out["y"][t] = pd.Series(td.y[:realised], index=td.dates[:realised])
    cpu = torch.device("cpu")
    for fold in folds:
        if fold.test_start > cut:
            continue
        train, _ = fold_spans(prep, fold)
        fit, _ = split_train_val(prep, train, prep.cfg.train.val_gap)
        for t, s in fit_scalers(prep, fit).items():
            if t in train:
                out["scaler"][(fold.index, t)] = np.concatenate([s.mean, s.std, [s.y_scale]])
        preds, _, _ = run_fold(prep, fold, cpu, None)
        # the rows whose target is realised by the cut: those exist whatever comes after it
        keep = [preds["date"][preds["ticker"] == t].isin(y.index) for t, y in out["y"].items()]
        out["pred"].append(preds[pd.concat(keep).reindex(preds.index, fill_value=False)])
    out["pred"] = pd.concat(out["pred"]) if out["pred"] else pd.DataFrame()
    return out


def _differences(a: dict, b: dict, variant: str, cut: pd.Timestamp) -> list[Finding]:
    why = f"changes when the bars after {cut.date()} are {variant}"
    out = []
    for t, xa in a["x"].items():
        xb = b["x"].get(t)
        common = xa.index.intersection(xb.index) if xb is not None else xa.index[:0]
        if xb is None or len(common) < len(xa):
            out.append(Finding("leak", "causality", "features", t, f"bars up to the cut {why}"))
            continue
        diff = xa.loc[common].to_numpy() != xb.loc[common].to_numpy()
        for j in np.flatnonzero(diff.any(axis=0)):
            i = int(np.argmax(diff[:, j]))
            out.append(
                Finding(
                    "leak", "causality", xa.columns[j], f"{t} {common[i].date()}", f"value {why}"
                )
            )
    for t, ya in a["y"].items():
        yb = b["y"][t].reindex(ya.index)
        bad = ~np.isclose(ya.to_numpy(), yb.to_numpy(), rtol=0, atol=0, equal_nan=True)
        if bad.any():
            d = ya.index[int(np.argmax(bad))].date()
            out.append(Finding("leak", "causality", "target", f"{t} {d}", f"realised value {why}"))
    for (k, t), sa in a["scaler"].items():
        sb = b["scaler"].get((k, t))
        if sb is None or not np.array_equal(sa, sb):
            out.append(Finding("leak", "causality", "scaler", f"{t} fold {k}", f"statistics {why}"))
    pa, pb = a["pred"], b["pred"]
    if len(pa):
        merged = pa.merge(pb, on=["date", "ticker"], how="left", suffixes=("", "_b"))
        # every forecast the fold holds: the return target's baselines, or the risk
        # targets' variance and quantile columns (tsconv.recipes.risk_fold)
        not_forecasts = {"date", "ticker", "fold", "zero", "realized", "realized_1"}
        not_forecasts.add("realized_variance")
        for col in [c for c in pa.columns if c not in not_forecasts]:
            va, vb = merged[col].to_numpy(), merged[f"{col}_b"].to_numpy()
            bad = ~((va == vb) | (np.isnan(va) & np.isnan(vb)))
            if bad.any():
                i = int(np.argmax(bad))
                where = f"{merged['ticker'].iloc[i]} {merged['date'].iloc[i].date()}"
                name = "model prediction" if col == "prediction" else f"{col} baseline"
                out.append(Finding("leak", "causality", name, where, f"{why} ({bad.sum()} rows)"))
    return out


# --------------------------------------------------------------------------- statistics


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 30 or a[ok].std() == 0 or b[ok].std() == 0:
        return 0.0
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _correlations(prep: Prepared) -> list[Finding]:
    """Same-bar features against the next-step target, and against the returns already
    realised at the bar (the targets of the rows h, h+1, ... bars back). One finding per
    column and kind, naming every ticker where it holds, with the largest figures."""
    h = prep.cfg.target.horizon
    found: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for t, td in prep.data.items():
        y = td.y
        for j, name in enumerate(td.feature_names):
            x = td.x[:, j].astype(np.float64)
            now = _corr(x, y)
            past = max(abs(_corr(x[k:], y[:-k])) for k in range(h, h + PAST_LAGS))
            if abs(now) >= LEAK_CORRELATION and abs(now) > 2 * past:
                found.setdefault(("leak", name), []).append((now, past, t))
            elif abs(now) >= SMELL_CORRELATION:
                found.setdefault(("smell", name), []).append((now, past, t))
    out = []
    for (kind, name), hits in found.items():
        now, past, _ = max(hits, key=lambda hit: abs(hit[0]))
        detail = (
            f"same-bar correlation {now:+.2f} with the next-step target (largest with a return "
            f"already realised: {past:.2f})"
        )
        where = ", ".join(t for _, _, t in hits)
        out.append(
            Finding("leak", "future_column", name, where, detail + ": it contains the future")
            if kind == "leak"
            else Finding(
                "smell", "correlation", name, where, detail + ": implausibly high for markets"
            )
        )
    return out


def _stamps(cfg: Config, frames, sources) -> list[Finding]:
    """A covariate whose value dated d moves with the tickers' return of the next bar (d to
    d+1) and not with that of d itself is dated a bar early (an index of another time zone
    stamped by its close, a file shifted by one row). Marked `known_at: close` that is a leak
    (found by the correlation check); under `next_open` the rule holds it back a bar, which
    makes it right, so it is a smell: the stamp is wrong, not the result."""
    out = []
    for c, cov in zip(cfg.covariates, covariates.build(cfg, sources), strict=True):
        if c.known_at != "next_open":
            continue
        for col in cov.values.columns:
            worst = (0.0, 0.0, "")
            for t, f in frames.items():
                r = np.log(f[cfg.data.price if cfg.data.price in f else "close"]).diff()
                both = pd.DataFrame({"c": cov.values[col], "same": r, "next": r.shift(-1)})
                both = both.dropna()
                same, nxt = (
                    _corr(both["c"].values, both["same"].values),
                    _corr(both["c"].values, both["next"].values),
                )
                if abs(nxt) > abs(worst[0]):
                    worst = (nxt, same, t)
            nxt, same, t = worst
            if abs(nxt) >= SMELL_CORRELATION and abs(nxt) > 2 * abs(same):
                out.append(
                    Finding(
                        "smell",
                        "stamp",
                        col,
                        t,
                        f"its value dated d moves with the ticker's return of the next bar "
                        f"({nxt:+.2f}), not of d ({same:+.2f}): dated a bar early? known_at: "
                        "next_open holds it back a bar, so it does not leak",
                    )
                )
    return out


def _data_smells(cfg: Config, frames, sources) -> list[Finding]:
    out = []
    for name, f in {**frames, **{f"covariate {k}": v for k, v in sources.items()}}.items():
        if "close" in f:
            price = cfg.data.price if cfg.data.price in f else "close"
            # a provider's adjusted close has its splits taken out, and a real crash (AAPL fell
            # 52% on 2000-09-29) looks like a split by its size alone: only an unadjusted
            # series is checked (no adj_close given, or data.price: close)
            if price == "close" or (f["adj_close"] == f["close"]).all():
                out += _splits(name, f, price)
            out += _jumps(name, f, price)  # adjusted or not: no split explains 50 times
            out += _stale(name, f[[c for c in [*PRICES, "volume"] if c in f]], "bars")
        for col in [c for c in f.columns if c not in [*PRICES, "volume"]]:
            out += _stale(name, f[[col]], f"values of {col}", bars=2 * STALE_BARS)
    return out


def _splits(name: str, f: pd.DataFrame, price: str) -> list[Finding]:
    ratio = (f[price] / f[price].shift(1)).to_numpy()
    out = []
    for i in np.flatnonzero(np.isfinite(ratio) & ((ratio > 1.75) | (ratio < 1 / 1.75))):
        r = ratio[i]
        near = min(SPLIT_RATIOS, key=lambda s: min(abs(r * s - 1), abs(r / s - 1)))
        if min(abs(r * near - 1), abs(r / near - 1)) < 0.05:
            shape = f"{near:g}:1 split" if r < 1 else f"1:{near:g} reverse split"
            out.append(
                Finding(
                    "smell",
                    "split",
                    price,
                    f"{name} {f.index[i].date()}",
                    f"price x{r:.2f} in one bar, like a {shape} the data does not adjust for",
                )
            )
    return out


def _jumps(name: str, f: pd.DataFrame, price: str) -> list[Finding]:
    return [
        Finding("smell", "jump", price, f"{name} {day.date()}", jump_words(ratio))
        for day, ratio in price_jumps(f[price]).items()
    ]


def _stale(name: str, f: pd.DataFrame, what: str, bars: int = STALE_BARS) -> list[Finding]:
    values = f.to_numpy()
    same = np.r_[False, (values[1:] == values[:-1]).all(axis=1)]
    out, i = [], 0
    while i < len(same):
        if same[i]:
            j = i
            while j < len(same) and same[j]:
                j += 1
            if j - i + 1 >= bars:
                out.append(
                    Finding(
                        "smell",
                        "stale",
                        what,
                        f"{name} {f.index[i - 1].date()} to {f.index[j - 1].date()}",
                        f"{j - i + 1} identical consecutive {what.split(' ')[0]} (stale data or "
                        "a filled gap)",
                    )
                )
            i = j
        else:
            i += 1
    return out


def _calendar_gaps(cfg: Config, frames, sources) -> list[Finding]:
    out = []
    for cov in covariates.build(cfg, sources):
        for t, f in frames.items():
            gaps = cov.stale(f.index)
            if gaps:
                day, last = gaps[0]
                out.append(
                    Finding(
                        "smell",
                        "calendar",
                        f"covariate {cov.label}",
                        f"{t} {day.date()}",
                        f"{len(gaps)} bar(s) further than fill_limit={cov.fill_limit} bars from "
                        f"its last value (here {last.date()})",
                    )
                )
    return out

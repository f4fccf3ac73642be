"""Ridge regression on lagged features, with its lags and penalty chosen from the data.

The model's linear part (the highway) and the `ridge_ar` baseline both regress the target on
the last bars of the scaled features, up to the whole window. How many bars, and how much
penalty, is chosen per fold on the training rows alone, by cross-validation over stretches of
time: every training row is predicted once by a fit that did not see its stretch, where a
single validation split would choose on a fifth of the rows. The lags come in
blocks whose bars share one weight (HAR's idea), so a signal spread over 20 or 40 bars (a sum,
a decay) costs a handful of weights, not one per bar per feature; and the lags of one feature
alone compete with those of all features, so a signal in the returns' own past costs one
weight per block, not one per block per feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tsconv.engine.runtime import one_blas_thread

# Penalties in mean-squared-error units on standardised features,
# mean((b - a c)^2) + penalty * |c|^2: from almost none to about the zero forecast.
PENALTIES = (1e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)

# The last bar's terms (`bar_terms`) read the standardised features clipped at +-CLIP: a 10-sd
# day would otherwise weigh 10,000 times a typical one in a squared term.
CLIP = 5.0
# (sign, knot) pairs. Hinges max(sign * z - knot, 0) per feature at 0 both ways and +-1, +-2
# sd make, with the linear term, a piecewise-linear function of z with kinks there (an
# absolute value max(z, 0) + max(-z, 0) with no linear term needed, a ramp); steps
# 1{sign * z > knot} a piecewise-constant one with jumps at 0, +-1 and +-2 sd (a sign, a
# threshold), which hinges only approach: the best hinge fit of sign(z) keeps 75-84% of its
# variance, the steps all of it. (A step down at 0 would be one minus the step up.) The hinge
# down at 0 comes last so that model files written before it load with its weight zero.
HINGES = ((1.0, 0.0), (1.0, 1.0), (1.0, 2.0), (-1.0, 1.0), (-1.0, 2.0), (-1.0, 0.0))
STEPS = ((1.0, 0.0), (1.0, 1.0), (1.0, 2.0), (-1.0, 1.0), (-1.0, 2.0))


@dataclass(frozen=True)
class RidgeFit:
    coef: np.ndarray  # (max_lags, features): coef[j, f] multiplies feature f of the bar j back
    lags: int  # bars the fit reads (0: the zero forecast, which no candidate beat)
    penalty: float  # the lags' penalty (the terms' own, `_refit`, when it reads no lags)
    cv_mse: float  # cross-validated mean squared error of the chosen candidate
    zero_mse: float  # the zero forecast's mean squared error on the same rows
    hinge: np.ndarray | None = None  # (features, len(HINGES)): each hinge's weight
    quad: np.ndarray | None = None  # (features, features) upper triangle: z_i z_j's weight
    offset: float = 0.0  # minus the last bar's terms' training mean (they are centred)
    step: np.ndarray | None = None  # (features, len(STEPS)): each step's weight


def lag_blocks(max_lags: int) -> list[tuple[int, int]]:
    """Lags [lo, hi): 0, 1, 2 alone, then [3, 5), [5, 10), [10, 20), [20, 40), ... up to
    `max_lags`. Candidates use the first k blocks, so the shortest reads one bar."""
    edges = [0, 1, 2, 3, 5]
    while edges[-1] < max_lags:
        edges.append(edges[-1] * 2)
    edges = sorted({min(e, max_lags) for e in edges})
    return list(zip(edges[:-1], edges[1:], strict=True))


def block_means(x: np.ndarray, rows: np.ndarray, blocks: list[tuple[int, int]]) -> np.ndarray:
    """(len(rows), blocks * F), block-major: each block's mean of the features of the bars
    `lo` to `hi - 1` before each row. Rows must have `blocks[-1][1] - 1` bars before them.

    Rows that come in long runs of consecutive bars (a ticker's training rows) take
    `_block_means_of_runs`: the same sums, bit for bit, added from slices of `x` rather
    than gathered copies (3x on a pooled fold; tests/test_linear.py)."""
    starts = np.flatnonzero(np.diff(rows) != 1) + 1
    if len(rows) and (len(starts) + 1) * 64 <= len(rows):  # runs of 64 rows or more on average
        return _block_means_of_runs(x, rows, blocks, starts)
    cols = []
    for lo, hi in blocks:
        # bar by bar, in the order (and so to the bit) of a mean over a (rows, bars, F) stack,
        # without holding that stack: 40 bars of a universe's rows would be gigabytes
        total = np.asarray(x[rows - lo], np.float64)
        for j in range(lo + 1, hi):
            total += x[rows - j]
        cols.append(total / (hi - lo))
    return np.concatenate(cols, axis=1) if cols else np.zeros((len(rows), 0))


def _block_means_of_runs(x, rows, blocks, starts) -> np.ndarray:
    """`block_means` of rows in runs of consecutive bars (`starts`: where each run after the
    first begins), a run's bars added as slices of `x`, in `block_means`' order."""
    n_feat = x.shape[1]
    out = np.empty((len(rows), len(blocks) * n_feat))
    for a, b in zip(np.r_[0, starts], np.r_[starts, len(rows)], strict=True):
        first, end = int(rows[a]), int(rows[b - 1]) + 1
        for k, (lo, hi) in enumerate(blocks):
            total = np.array(x[first - lo : end - lo], np.float64)  # contiguous: faster adds
            for j in range(lo + 1, hi):
                total += x[first - j : end - j]
            out[a:b, k * n_feat : (k + 1) * n_feat] = total / (hi - lo)
    return out


def bar_terms(x: np.ndarray, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
    """(len(rows), F (len(HINGES) + len(STEPS)) + F (F + 1) / 2): the nonlinear terms of each
    row's own bar, z its features clipped at +-CLIP: hinges of each feature (feature-major),
    the products z_i z_j (i <= j, squares and pairwise interactions), then the steps of each
    feature. `cols`: only those columns, computed alone (a universe's rows times all 124
    terms of 8 features would be gigabytes)."""
    return _terms(np.clip(np.asarray(x[rows], np.float64), -CLIP, CLIP), cols)


def _terms(z: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
    """`bar_terms` of the rows' clipped features `z`."""
    kinds = _term_kinds(z.shape[1])
    cols = range(len(kinds)) if cols is None else cols
    out = np.empty((len(z), len(cols)))
    for o, c in enumerate(cols):
        kind, f, g = kinds[c]
        if kind == "product":
            out[:, o] = z[:, f] * z[:, g]
        elif kind == "hinge":
            sign, knot = HINGES[g]
            out[:, o] = np.maximum(sign * z[:, f] - knot, 0.0)
        else:
            sign, knot = STEPS[g]
            out[:, o] = sign * z[:, f] > knot
    return out


def _term_kinds(n_feat: int) -> list[tuple[str, int, int]]:
    """`bar_terms`' columns in order: ("hinge", feature, knot), ("product", i, j) and
    ("step", feature, knot)."""
    i, j = np.triu_indices(n_feat)
    return [
        *(("hinge", f, k) for f in range(n_feat) for k in range(len(HINGES))),
        *(("product", int(a), int(b)) for a, b in zip(i, j, strict=True)),
        *(("step", f, k) for f in range(n_feat) for k in range(len(STEPS))),
    ]


def _bar_weights(fit: RidgeFit) -> np.ndarray:
    i, j = np.triu_indices(len(fit.quad))
    step = np.zeros_like(fit.hinge) if fit.step is None else fit.step
    return np.concatenate([fit.hinge.reshape(-1), fit.quad[i, j], step.reshape(-1)])


def predict(x: np.ndarray, rows: np.ndarray, fit: RidgeFit) -> np.ndarray:
    """The fit's forecasts at `rows`, as row-wise sums: a prediction must not change (even in
    the last bit) when later rows are added, which a BLAS product of another shape may do.
    `x` is one series: a row with fewer bars before it reads its first bar for the missing."""
    if fit.lags == 0:
        return np.zeros(len(rows))
    idx = np.clip(rows[:, None] - np.arange(fit.lags)[None, :], 0, None)
    out = (x[idx] * fit.coef[None, : fit.lags]).sum(axis=(1, 2))
    if fit.quad is not None:
        out = out + ((bar_terms(x, rows) * _bar_weights(fit)).sum(axis=1) + fit.offset)
    return out


def _cv_errors(a, b, groups, widths, penalties, cells=None):
    """Yield (width, label, column penalties, squared errors of every row predicted by the fit
    on the other groups, effective degrees of freedom) for the first `width` columns of `a`
    and each (label, column penalties) of `penalties(width)`: the ridge regression with a penalty of
    its own on each column, mean((b - a c)^2) + sum_j penalty_j c_j^2. Its degrees of
    freedom are trace(G (G + P)^-1), G the columns' Gram matrix over all rows.

    A width's candidates are solved together (one batched solve per group, one matrix
    product for their predictions): the same systems as one at a time, without a Python
    round trip per penalty and group (docs/performance.md).

    `cells` (a panel's `_Cells`): the errors come summed per point in time, from the cells'
    sums. Each cell's Gram matrix a'a, a'b and b'b are summed once; the groups' and the
    whole's are sums of those, and a candidate c's squared errors on a cell are
    b'b - 2 c'(a'b) + c'(a'a)c. The rows are read once, not once per candidate: the cost
    goes with the dates, not with the tickers."""
    if cells is None:
        parts = [groups == g for g in range(int(groups.max()) + 1)]
        a_outs = [a[part] for part in parts]
        gram_all, cross_all = a.T @ a, a.T @ b
        grams = [a_out.T @ a_out for a_out in a_outs]
        crosses = [a_out.T @ b[part] for a_out, part in zip(a_outs, parts, strict=True)]
        n_out = [int(part.sum()) for part in parts]
    else:
        gram_c, cross_c, bb_c = cells.sums(a, b)
        grams = [gram_c[g].sum(0) for g in cells.of_group]
        crosses = [cross_c[g].sum(0) for g in cells.of_group]
        gram_all, cross_all = sum(grams), sum(crosses)
        n_out = cells.rows_of_group
    held_in = [  # each group's fit: the Gram matrix and a'b of the other groups' rows
        ((gram_all - gram) / (len(b) - n), (cross_all - cross) / (len(b) - n))
        for gram, cross, n in zip(grams, crosses, n_out, strict=True)
    ]
    n_groups = len(grams)
    for p in widths:
        if 2 * p >= len(b) * (n_groups - 1) / n_groups:  # fewer than two rows a weight
            break
        candidates = penalties(p)
        diag = np.stack([np.diag(pen) for _, pen in candidates])  # (candidates, p, p)
        if cells is None:
            errors = np.empty((len(candidates), len(b)))
        else:
            errors = np.zeros((len(candidates), cells.n_units))
        for g, (gram, cross) in enumerate(held_in):
            rhs = np.broadcast_to(cross[:p, None], (len(candidates), p, 1))
            c = np.linalg.solve(gram[:p, :p] + diag, rhs)[..., 0]  # (candidates, p)
            if cells is None:
                errors[:, parts[g]] = ((b[parts[g], None] - a_outs[g][:, :p] @ c.T) ** 2).T
                continue
            own = cells.of_group[g]
            quad = ((gram_c[own, :p, :p] @ c.T) * c.T).sum(1)  # (cells, candidates)
            sse = bb_c[own, None] - 2 * cross_c[own, :p] @ c.T + quad
            for e, cell_e in zip(errors, sse.T, strict=True):
                e += np.bincount(cells.unit[own], cell_e, cells.n_units)
        full = gram_all[:p, :p] / len(b)
        dfs = np.trace(np.linalg.solve(full + diag, full), axis1=1, axis2=2)
        for (label, pen), e, df in zip(candidates, errors, dfs, strict=True):
            yield p, label, pen, e, float(df)


class _Cells:
    """A panel's rows by cell: the rows of one point in time (`unit`) in one cross-validation
    group (a group boundary can split a date)."""

    def __init__(self, unit: np.ndarray, groups: np.ndarray):
        n_groups = int(groups.max()) + 1
        self.n_units = int(unit.max()) + 1
        keys, cell = np.unique(unit * n_groups + groups, return_inverse=True)
        self.unit, group = keys // n_groups, keys % n_groups
        self.of_group = [np.flatnonzero(group == g) for g in range(n_groups)]
        self.rows_of_group = np.bincount(groups, minlength=n_groups)
        counts = np.bincount(cell)
        order = np.argsort(cell, kind="stable")
        within = np.arange(len(cell)) - np.repeat(np.cumsum(counts) - counts, counts)
        self.index = np.full((len(keys), int(counts.max())), -1)  # each cell's rows, -1 pad
        self.index[cell[order], within] = order
        self.rows_per_cell = len(cell) / len(keys)

    def sums(self, a: np.ndarray, b: np.ndarray) -> tuple:
        """Per cell: the Gram matrix of `a`'s columns, a'b and b'b."""
        n, cols = len(self.index), a.shape[1]
        gram, cross, bb = np.empty((n, cols, cols)), np.empty((n, cols)), np.empty(n)
        step = max(1, 2**21 // (self.index.shape[1] * cols))  # 16 MB of rows at a time
        for lo in range(0, n, step):
            idx = self.index[lo : lo + step]
            rows, y = a[idx], b[idx]  # (cells, rows, cols), (cells, rows)
            pad = idx < 0
            if pad.any():  # cells with fewer rows than the fullest
                rows[pad], y[pad] = 0.0, 0.0
            gram[lo : lo + step] = rows.transpose(0, 2, 1) @ rows
            cross[lo : lo + step] = (y[:, None, :] @ rows)[:, 0]
            bb[lo : lo + step] = np.einsum("cr,cr->c", y, y)
        return gram, cross, bb


def _time_groups(order: np.ndarray, n_groups: int) -> np.ndarray:
    """Each row's cross-validation group: `n_groups` contiguous stretches of time."""
    ranks = np.argsort(np.argsort(order, kind="stable"), kind="stable")
    return (ranks * n_groups) // max(len(order), 1)


def _solve(a: np.ndarray, b: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """The ridge coefficients with column j's own penalty `penalty[j]`."""
    return np.linalg.solve(a.T @ a / len(b) + np.diag(penalty), a.T @ b / len(b))


@one_blas_thread
def select_ridge(
    x: np.ndarray,
    y: np.ndarray,
    rows: np.ndarray,
    max_lags: int,
    since: np.ndarray | int = 0,
    order: np.ndarray | None = None,
    penalties: tuple[float, ...] = PENALTIES,
    n_groups: int = 5,
    nonlinear: bool = False,
) -> RidgeFit:
    """The ridge regression of y[rows] on the block means of the last bars of x, over the
    first k lag blocks (k = 1 up to `max_lags` bars) and a penalty, chosen by cross-validation
    over `n_groups` contiguous stretches of time (`order`: each row's time, default the row):
    of the lowest-error candidate's smaller versions (the zero forecast one of them), the
    simplest (fewest degrees of freedom) whose error is within one standard error of the
    lowest (`_Scores.one_se`). No intercept: the zero forecast is the benchmark,
    and a fitted mean return is a poor forecast of its own.

    Why not leave-one-out: the block means over 20 or 40 bars move slowly, so a row's
    neighbours carry almost its own features and the same market regime, and leaving out one
    row hides nothing; it chose 61 lags on the embedded sample, which lost out of sample.
    Leaving out a fifth of the time at once is what the fit faces on the test span. The
    one-standard-error rule: the lowest of a hundred noisy errors is low partly by luck, and a
    linear forecast that is not clearly better than a near-zero one loses out of sample.

    The lag candidates read the first k blocks of every feature, or of one feature alone (a
    signal in the returns' own past then costs one weight a block, not eight).

    `nonlinear`: the candidates also include the chosen linear fit's lags plus one group of
    the nonlinear terms of the row's own bar (`bar_terms`, `term_groups`: one feature's
    hinges and square, or its steps, or one pair's product, centred on the training rows): a
    signal in the size of a move, a volume shock or a range, a sign or a threshold, or two
    features together, at the cost of a few weights, where a network needs far more rows to
    learn it. All the terms at once (124 for 8 features) cost more in noise than they found.

    `since`: the first row of each row's own series (a panel's ticker), before which no lag is
    read. Candidates compete on the rows that have all `max_lags` bars, then the chosen one is
    refitted on every row with the bars it reads."""
    n_feat = x.shape[1]
    zero = RidgeFit(np.zeros((max_lags, n_feat)), 0, float(max(penalties)), np.inf, np.inf)
    history = rows - np.broadcast_to(np.asarray(since), rows.shape)
    order = rows if order is None else np.asarray(order)
    blocks = lag_blocks(max_lags)
    keep = history >= max_lags - 1
    full = rows[keep]
    if len(full) < 2 * n_groups:
        return zero
    b = np.asarray(y[full], np.float64)
    groups = _time_groups(order[keep], n_groups)
    scores = _Scores(b, groups, penalties, np.unique(order[keep], return_inverse=True)[1])
    lin = block_means(x, full, blocks)  # block-major: block k's features are columns kF..kF+F-1
    no_terms = np.zeros(0, np.int64)
    widths = range(1, len(blocks) + 1)
    lagged = {"zero": lin[:, :0], "lags": lin}  # views of lin, no copies

    def uniform(p):  # one penalty on every column
        return [(pen, np.full(p, pen)) for pen in penalties]

    scores.add("lags", no_terms, np.arange(n_feat), lin, [k * n_feat for k in widths], uniform)
    if n_feat > 1:
        for f in range(n_feat):
            lagged[f"lags of {f}"] = lin[:, f::n_feat]
            scores.add(
                f"lags of {f}", no_terms, np.array([f]), lagged[f"lags of {f}"], widths, uniform
            )
    if nonlinear:
        # one group of the last bar's terms at a time on top of the chosen linear fit: a
        # signal in one feature or one pair is found at the cost of its own few weights.
        # The lags keep the penalty they were chosen at and the terms get their own: with
        # one penalty for both, a term group that wanted a small one freed the lags from
        # theirs, and they fitted noise (docs/models.md)
        base = scores.choose()
        feats = scores.designs[base[0]][1]
        base_lin = lagged[base[0]][:, : base[1]]
        z = np.clip(np.asarray(x[full], np.float64), -CLIP, CLIP)  # bar_terms' input, once
        for label, cols in term_groups(n_feat):
            q = len(cols)

            def own(p, q=q):  # the terms' penalty, then the lags' as chosen
                return [
                    (pen, np.r_[np.full(q, pen), scores.pen[base][: p - q]]) for pen in penalties
                ]

            a = np.concatenate([_centred(_terms(z, cols)), base_lin], 1)
            scores.add(label, cols, feats, a, [a.shape[1]], own)
    chosen = scores.choose()
    zero_mse = float(np.mean(b**2))
    name, width, _ = chosen
    if name == "zero":
        return RidgeFit(zero.coef, 0, zero.penalty, zero_mse, zero_mse)
    cols, feats = scores.designs[name]
    k = (width - len(cols)) // max(len(feats), 1)
    cv_mse = float(scores.sums[chosen].sum() / len(b))
    pen = scores.pen[chosen]
    return _refit(x, y, rows, history, blocks, cols, np.asarray(feats), k, pen, cv_mse, zero_mse)


class _Scores:
    """Every candidate's cross-validated squared errors, summed per point in time (`unit`:
    each row's date, so a universe's rows cost one number per date and candidate, not one
    per row), with its degrees of freedom; designs are scored one at a time and not kept.

    The one-standard-error rule's standard error comes from the per-date sums: the rows of
    one date share its market move, so their errors are not independent draws. On one series
    a date is a row, and this is the per-row rule."""

    def __init__(self, b, groups, penalties, unit):
        self.b, self.groups, self.unit = b, groups, unit
        self.n_units = int(unit.max()) + 1
        # one series: each row its own point in time, and its error is its own sum
        self.per_row = self.n_units == len(unit) and bool(np.all(unit[1:] > unit[:-1]))
        self.zero = zero = ("zero", 0, max(penalties))
        self.cells = None if self.per_row else _Cells(unit, groups)
        self.sums, self.total, self.df, self.pen = {}, {}, {}, {}
        self._keep(zero, b**2, 0.0, np.zeros(0))  # pen: each candidate's column penalties
        # name: (last-bar term columns, the features whose lags it reads)
        self.designs = {"zero": (np.zeros(0, np.int64), np.zeros(0, np.int64))}

    def _keep(self, key, errors, df, pen):
        """Keep a candidate's errors, one per row."""
        sums = errors if self.per_row else np.bincount(self.unit, weights=errors)
        self._keep_sums(key, sums, df, pen)

    def _keep_sums(self, key, sums, df, pen):
        """Keep a candidate's errors summed per point in time."""
        self.sums[key], self.total[key] = sums, sums.sum()
        self.df[key], self.pen[key] = df, pen

    def add(self, name, cols, feats, a, widths, penalties):
        """Score the design `a` at `widths`, each with the (label, column penalties) of
        `penalties(width)`: candidates (name, width, label)."""
        self.designs[name] = (cols, feats)
        # by cell where a date has more rows than the design has columns (`_cv_errors`)
        by_cell = self.cells is not None and a.shape[1] < self.cells.rows_per_cell
        cells, keep = (self.cells, self._keep_sums) if by_cell else (None, self._keep)
        for p, label, pen, e, df in _cv_errors(a, self.b, self.groups, widths, penalties, cells):
            keep((name, p, label), e, df, pen)

    def parts(self, key: tuple) -> tuple[set, set, int]:
        """A candidate's last-bar term columns, the features whose lags it reads, and how
        many lag blocks of them."""
        cols, feats = self.designs[key[0]]
        return set(cols.tolist()), set(feats.tolist()), (key[1] - len(cols)) // max(len(feats), 1)

    def simpler(self, c: tuple, best: tuple) -> bool:
        """Whether candidate `c` is simpler than `best`: a smaller version of it (no term,
        feature or lag block that `best` lacks; fewer degrees of freedom, which more penalty
        also gives), or another design with at least one degree of freedom fewer."""
        if self.df[c] >= self.df[best]:
            return False
        (c_cols, c_feats, c_lags), (b_cols, b_feats, b_lags) = self.parts(c), self.parts(best)
        smaller = c_cols <= b_cols and c_feats <= b_feats and c_lags <= b_lags
        return smaller or self.df[c] <= self.df[best] - 1

    def one_se(self) -> tuple:
        """The simplest candidate (fewest degrees of freedom) whose cross-validated error is
        within one standard error (of the paired differences) of the lowest's, among the
        candidates simpler than the lowest (`simpler`); of equals in degrees of freedom the
        first scored, and the lowest itself when none is within.

        Why `simpler` is not merely fewer degrees of freedom: the rule trades a little error
        for a simpler model, and another design a fraction of a degree of freedom below the
        lowest is not simpler, only different. Among all candidates the rule swapped a log
        return x close location product (the signal) for an open-to-close return's
        (correlated with it, 0.17 degrees of freedom fewer at more penalty) and kept a third
        of the attainable forecast; allowing only the lowest's smaller versions fitted more
        noise on null draws, where another design one or more weights smaller is the
        simpler model the rule is for (docs/known_answers.md)."""
        best = min(self.total, key=self.total.get)
        simpler = [c for c in self.sums if self.simpler(c, best)]
        if not simpler:
            return best
        n, root = len(self.b), np.sqrt(self.n_units)
        d = np.stack([self.sums[c] for c in simpler]) - self.sums[best]
        close = d.sum(1) / n <= d.std(1, ddof=1) * root / n
        if not close.any():
            return best
        df = np.array([self.df[c] for c in simpler])
        return simpler[int(np.flatnonzero(close & (df == df[close].min()))[0])]

    def choose(self) -> tuple:
        """The one-standard-error rule's choice if its cross-validated error is below the
        zero forecast's by two standard errors of their paired per-date difference, else the
        zero forecast.

        The rule's choice inherits the luck of the lowest of some 700 errors, and under
        heavy-tailed noise a few loud days can make a term look like a signal: on a null
        draw with GARCH-t(5) noise (battery seed 12, #15) the linear proxy took vol_20's
        shape in one fold with a cross-validated gain of 3.9% over zero, and `quick` took
        it in one fold, lost R^2 0.27 there and -0.044 over the backtest (significantly
        worse than zero). Its gain came from a few days, so its standard error was large:
        two of them send it back to zero (that backtest -0.003). On the linear proxy's 24
        seeds null draws below R^2 -0.002 went from 9 to 2 of 96, and three of 480 signal
        draws lost 7-24 points (docs/known_answers.md, sessions 26-27)."""
        chosen = self.one_se()
        d = self.sums[chosen] - self.sums[self.zero]
        return chosen if d.sum() <= -2 * d.std(ddof=1) * np.sqrt(len(d)) else self.zero


def term_groups(n_feat: int) -> list[tuple[str, np.ndarray]]:
    """The columns of `bar_terms` that go together: each feature's hinges and square, each
    feature's steps, and each pair's product."""
    n_hinge, n_step = len(HINGES), len(STEPS)
    i, j = np.triu_indices(n_feat)
    product = {(a, b): n_feat * n_hinge + c for c, (a, b) in enumerate(zip(i, j, strict=True))}
    first_step = n_feat * n_hinge + len(product)
    out = []
    for f in range(n_feat):
        hinges = np.arange(f * n_hinge, (f + 1) * n_hinge)
        out.append((f"shape of {f}", np.append(hinges, product[f, f])))
        out.append((f"steps of {f}", first_step + np.arange(f * n_step, (f + 1) * n_step)))
    for a, b in product:
        if a < b:
            out.append((f"{a} x {b}", np.array([product[a, b]])))
    return out


def _centred(a: np.ndarray) -> np.ndarray:
    return a - a.mean(0)


def _refit(x, y, rows, history, blocks, cols, feats, k, pen, cv_mse, zero_mse) -> RidgeFit:
    """The chosen candidate (the last bar's terms `cols`, the first k lag blocks of the
    features `feats`) fitted on every row with the bars it reads."""
    n_feat = x.shape[1]
    lags = blocks[k - 1][1] if k else 1
    used = rows[history >= lags - 1]
    b = np.asarray(y[used], np.float64)
    terms = bar_terms(x, used, cols)
    mean = terms.mean(0)
    lagged = block_means(x[:, feats], used, blocks[:k])
    c = _solve(np.concatenate([terms - mean, lagged], 1), b, pen)
    q = len(cols)
    pen = float(pen[q]) if k else float(pen[0])  # the lags' penalty, or the terms' alone
    coef = np.zeros((blocks[-1][1], n_feat))
    for (lo, hi), ck in zip(blocks[:k], c[q:].reshape(k, len(feats)), strict=True):
        coef[lo:hi, feats] = ck / (hi - lo)
    if not q:
        return RidgeFit(coef, lags, pen, cv_mse, zero_mse)
    hinges_end = n_feat * len(HINGES)  # bar_terms' columns: hinges, products, steps
    steps_start = hinges_end + n_feat * (n_feat + 1) // 2
    weights = np.zeros(len(_term_kinds(n_feat)))
    weights[cols] = c[:q]
    hinge = weights[:hinges_end].reshape(n_feat, len(HINGES))
    quad = np.zeros((n_feat, n_feat))
    quad[np.triu_indices(n_feat)] = weights[hinges_end:steps_start]
    step = weights[steps_start:].reshape(n_feat, len(STEPS))
    offset = -float(c[:q] @ mean)
    return RidgeFit(coef, lags, pen, cv_mse, zero_mse, hinge, quad, offset, step)

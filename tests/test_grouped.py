"""An ensemble's members trained together as one grouped model (`train.grouped_members`):
the grouped model computes each member's function and gradient, and the grouped fit trains
each member as it would train alone (tsconv.engine.fit_members)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import ar1_returns, ohlcv_from_returns, random_head, tiny_config
from tsconv.cli import app
from tsconv.config import dump_yaml, load_config
from tsconv.engine.fit_members import MemberBatches, clip_each_member
from tsconv.models.fast.grouped import GroupedModel
from tsconv.models.registry import build_model
from tsconv.recipes.fit_span import fit_span, fit_span_members, member_seed
from tsconv.recipes.prepare import prepare

CPU = torch.device("cpu")
runner = CliRunner()

MODELS = {
    "tcn": {"kind": "tcn", "channels": 6, "layers": 3, "highway": True},
    "tcn_widths": {"kind": "tcn", "channel_list": [4, 6], "weight_norm": False},
    "multiscale": {"kind": "multiscale", "channels": 5, "kernels": [3, 5], "mix": 4},
    "symmetric": {"kind": "multiscale", "channels": 5, "kernels": [3, 5], "causal": False},
}


def _members(section: dict, k: int = 3, features: int = 4) -> list[torch.nn.Module]:
    cfg = tiny_config(model={**section, "dropout": 0.0}).model
    members = []
    for m in range(k):
        torch.manual_seed(m)
        model = random_head(build_model(cfg, features), seed=m)
        if model.highway is not None and members:  # one linear fit for all members
            model.highway.load_state_dict(members[0].highway.state_dict())
        members.append(model)
    return members


def _pre_norm_bias(name: str, model: torch.nn.Module) -> bool:
    """A convolution's bias right before BatchNorm: its gradient is zero up to rounding."""
    return name.endswith(".0.bias") and hasattr(model, "branches")


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_grouped_model_computes_each_members_output_and_gradient(kind):
    members = _members(MODELS[kind])
    group = GroupedModel(members)
    xs = [torch.randn(5, 4, 40, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    out = group(torch.cat(xs, 1))
    ref = torch.cat([m(x) for m, x in zip(members, xs, strict=True)], 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())

    out.square().sum().backward()
    ref.square().sum().backward()
    grads = dict(group.net.named_parameters())
    scale = max(p.grad.abs().max().item() for p in grads.values())
    for name, p in grads.items():
        if _pre_norm_bias(name, members[0]):
            continue
        want = torch.cat([dict(m.named_parameters())[name].grad for m in members])
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6 * scale, msg=name)
    for m, member in enumerate(members):  # BatchNorm's running statistics too
        got, want = group.member_state(m), member.state_dict()
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_member_weights_go_in_and_come_out_unchanged():
    members = _members(MODELS["tcn"])
    group = GroupedModel(members)
    for m, member in enumerate(members):
        got = group.member_state(m)
        for name, value in member.state_dict().items():
            assert torch.equal(got[name], value), name


def test_members_with_different_highways_are_refused():
    members = _members(MODELS["tcn"], k=2)
    with torch.no_grad():
        members[1].highway.weight.add_(1.0)
    with pytest.raises(ValueError, match="same highway"):
        GroupedModel(members)


def test_padding_rows_stay_out_of_each_members_batchnorm_statistics():
    """Members' batches of 5, 3 and 4 windows: side by side, the shorter ones padded, each
    member's output rows, loss gradient and running statistics are its own batch's."""
    members = _members(MODELS["multiscale"])
    group = GroupedModel(members)
    sizes = [5, 3, 4]
    xs = [torch.randn(n, 4, 30, generator=torch.Generator().manual_seed(n)) for n in sizes]
    padded = torch.cat([torch.cat([x, x[: 5 - len(x)]]) for x in xs], 1)  # repeats, as fit
    rows = torch.stack([torch.arange(5) < n for n in sizes], 1)
    with group.padded(rows):
        out = group(padded)
    loss = sum((out[:n, m] ** 2).mean() for m, n in enumerate(sizes))
    loss.backward()
    for m, (member, x) in enumerate(zip(members, xs, strict=True)):
        ref = member(x)
        torch.testing.assert_close(out[: len(x), m], ref[:, 0], rtol=1e-5, atol=1e-5)
        (ref**2).mean().backward()
        for name, value in member.state_dict().items():
            if value.dtype.is_floating_point:
                torch.testing.assert_close(
                    group.member_state(m)[name], value, rtol=1e-5, atol=1e-6, msg=name
                )
    head = dict(group.net.named_parameters())["head.weight"].grad
    want = torch.cat([m.head.weight.grad for m in members])
    torch.testing.assert_close(head, want, rtol=1e-4, atol=1e-7)


def test_member_batches_pad_a_shorter_batch_out_of_the_loss():
    cfg = tiny_config()
    prep = prepare(cfg, {"A": ohlcv_from_returns(ar1_returns(400, seed=1))})
    from tsconv.recipes.fit_span import span_windows

    _, _, ds, _ = span_windows(prep, {"A": (0, 300)}, {"A": (300, 350)})
    batches = MemberBatches(ds, 2)
    x, y, mask, rows = batches.side_by_side([torch.arange(4), torch.arange(2)])
    assert x.shape[:2] == (4, 2 * len(cfg.features)) and y.shape[:2] == mask.shape[:2] == (4, 2)
    assert rows.tolist() == [[True, True], [True, True], [True, False], [True, False]]
    assert not mask[2:, 1].any() and mask[:2, 1].any()
    assert batches.side_by_side([torch.arange(3), torch.arange(3)])[3] is None


def test_clipping_each_member_is_clip_grad_norm_of_its_own_gradient():
    members = _members(MODELS["tcn"], k=3)
    group = GroupedModel(members)
    for p in group.parameters():
        p.grad = torch.randn_like(p) * 10
    grads = [[p.grad.chunk(3)[m].clone() for p in group.parameters()] for m in range(3)]
    clip_each_member(list(group.parameters()), 3, 1.0)
    for m in range(3):
        alone = [torch.nn.Parameter(g.clone()) for g in grads[m]]
        for a, g in zip(alone, grads[m], strict=True):
            a.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(alone, 1.0)
        for p, a in zip(group.parameters(), alone, strict=True):
            torch.testing.assert_close(p.grad.chunk(3)[m], a.grad, rtol=1e-5, atol=1e-7)


def _ar1_prep(model: dict, patience: int):
    frames = {
        "A": ohlcv_from_returns(ar1_returns(1600, phi=0.3, seed=7)),
        "B": ohlcv_from_returns(ar1_returns(1600, phi=0.3, seed=8)),
    }
    cfg = tiny_config(
        features=["log_return", "hl_range"],
        window=32,
        model={**model, "dropout": 0.0},
        train={
            "epochs": 12,
            "lr": 0.005,
            "patience": patience,
            "batch_size": 16,
            "restore_best": True,
        },
    )
    return prepare(cfg, frames)


def test_members_trained_together_are_the_members_trained_alone():
    """Each member's batches, steps, validation, best epoch, early stop and weights as in its
    own fit, to float rounding (the members here stop at different epochs)."""
    prep = _ar1_prep({"channels": 8, "layers": 2}, patience=2)
    fit_rows, val_rows = {"A": (0, 1000), "B": (0, 1000)}, {"A": (1000, 1300), "B": (1000, 1300)}
    seeds = [member_seed(3, m) for m in range(4)]
    alone = [fit_span(prep, fit_rows, val_rows, seed=s, device=CPU) for s in seeds]
    models, _, _, results = fit_span_members(prep, fit_rows, val_rows, seeds=seeds, device=CPU)
    assert len({r.best_epoch for r in results}) > 1 and any(r.stopped_early for r in results)
    for (model, _, _, want), got_model, got in zip(alone, models, results, strict=True):
        assert (got.best_epoch, got.steps, got.stopped_early, len(got.history)) == (
            want.best_epoch,
            want.steps,
            want.stopped_early,
            len(want.history),
        )
        for key in ("val_loss", "train_loss"):  # each member's own mean over its own batches
            np.testing.assert_allclose(
                [h[key] for h in got.history], [h[key] for h in want.history], rtol=1e-5
            )
        for name, value in model.state_dict().items():
            torch.testing.assert_close(
                got_model.state_dict()[name], value, rtol=1e-4, atol=1e-6, msg=name
            )


def test_multiscale_members_trained_together_follow_their_own_fits():
    """The multi-scale model (BatchNorm, padded batches) through its validation losses, to a
    looser tolerance: Adam turns the rounding noise of directions BatchNorm makes flat (the
    bias before it) into whole steps, so weights drift apart slowly where the function does
    not, and near-ties between epochs could go either way (so no early stopping here)."""
    prep = _ar1_prep(MODELS["multiscale"], patience=0)
    fit_rows, val_rows = {"A": (0, 1000), "B": (0, 1000)}, {"A": (1000, 1300), "B": (1000, 1300)}
    seeds = [member_seed(3, m) for m in range(3)]
    alone = [fit_span(prep, fit_rows, val_rows, seed=s, device=CPU)[3] for s in seeds]
    results = fit_span_members(prep, fit_rows, val_rows, seeds=seeds, device=CPU)[3]
    for want, got in zip(alone, results, strict=True):
        assert got.steps == want.steps and len(got.history) == len(want.history) == 12
        np.testing.assert_allclose(
            [h["val_loss"] for h in got.history], [h["val_loss"] for h in want.history], rtol=1e-3
        )
        np.testing.assert_allclose(got.best_val, want.best_val, rtol=1e-3)


def _backtest(tmp_path: Path, cfg, name: str, *extra: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_yaml(cfg))
    out = tmp_path / name
    r = runner.invoke(app, ["backtest", "--config", str(path), "--out", str(out), *extra])
    assert r.exit_code == 0, r.output
    return out


def test_backtest_with_members_together(tmp_path):
    """Without dropout the forecasts are the separate members' to float rounding; with it,
    the same bytes on two workers as in one process (a fold's members are one task)."""
    common = {"backtest": {"train_span": 1800, "test_span": 500}}
    alone = tiny_config(**common, train={"threads": 1, "ensemble": 2})
    together = tiny_config(**common, train={"threads": 1, "ensemble": 2, "grouped_members": True})
    a = _backtest(tmp_path, alone, "alone")
    t = _backtest(tmp_path, together, "together")
    pred = {
        n: pd.read_parquet(p / "predictions.parquet")["prediction"].to_numpy()
        for n, p in [("a", a), ("t", t)]
    }
    np.testing.assert_allclose(pred["t"], pred["a"], rtol=1e-4, atol=1e-7)
    folds = pd.read_csv(t / "folds.csv")
    assert set(folds["members"]) == {2}
    assert folds["member_best_epochs"].equals(pd.read_csv(a / "folds.csv")["member_best_epochs"])

    dropout = tiny_config(
        **common,
        model={"dropout": 0.2},
        train={"threads": 1, "ensemble": 2, "grouped_members": True},
    )
    serial = _backtest(tmp_path, dropout, "serial")
    par = _backtest(tmp_path, dropout, "par", "--workers", "2")
    assert json.loads((par / "timing.json").read_text())["workers"] == 2
    for name in ["predictions.parquet", "metrics.json"]:
        assert (serial / name).read_bytes() == (par / name).read_bytes(), name


def test_train_with_members_together_writes_every_member(tmp_path):
    cfg = tiny_config(train={"ensemble": 3, "grouped_members": True, "threads": 1})
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    r = runner.invoke(app, ["train", "--config", str(path), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["members"]) == 3
    assert len(pd.read_csv(tmp_path / "run" / "metrics.csv")) == 3 * cfg.train.epochs
    r = runner.invoke(app, ["predict", "--run", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output


def test_shipped_configs_leave_members_alone():
    for name in ["quick", "tcn", "multiscale", "wf_msft"]:
        assert load_config(name).train.grouped_members is False


def test_without_validation_rows_each_members_training_loss_decides_as_alone():
    """No validation rows: each member's own mean training loss (over the sequences it saw:
    members cut their windows at their own offsets) picks its best epoch and stops it."""
    cfg = tiny_config(train={"epochs": 8, "patience": 1, "restore_best": True, "lr": 0.01})
    prep = prepare(cfg)
    rows = {"MSFT": (0, 1500)}, {"MSFT": (1500, 1500)}
    seeds = [member_seed(0, m) for m in range(4)]
    alone = [fit_span(prep, *rows, seed=s, device=CPU)[3] for s in seeds]
    together = fit_span_members(prep, *rows, seeds=seeds, device=CPU)[3]
    for want, got in zip(alone, together, strict=True):
        assert (got.best_epoch, len(got.history)) == (want.best_epoch, len(want.history))
        np.testing.assert_allclose(
            [h["train_loss"] for h in got.history],
            [h["train_loss"] for h in want.history],
            rtol=1e-5,
        )


def test_padded_batchnorm_statistics_stay_finite_in_float16():
    """float16 activations (CUDA autocast without bfloat16): a padded batch's statistics are
    summed in float32, as BatchNorm's are, not in float16, which overflows."""
    from tsconv.models.fast.grouped import GroupedBatchNorm1d

    torch.manual_seed(0)
    x = (torch.randn(64, 8, 128) * 3 + 2).half()
    norm = GroupedBatchNorm1d(2, 4).train()
    norm.rows = torch.stack([torch.arange(64) < n for n in (63, 64)], 1)
    out = norm(x)
    ref = torch.nn.BatchNorm1d(4).train()
    want = ref(x[:63, :4].float())
    assert out.dtype == torch.float16 and torch.isfinite(norm.running_var).all()
    torch.testing.assert_close(out[:63, :4].float(), want, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(norm.running_var[:4], ref.running_var, rtol=1e-3, atol=1e-4)

"""l2bn.analysis.transfer and ``l2bn transfer``: η for another λ (or λ for another η)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from cli_run import run_cli

from l2bn.analysis.transfer import KSource, fitted_k, theory_k, transfer
from l2bn.errors import AnalysisError, ConfigError


def fitted_report(
    k: float | None = 0.8,
    ci: tuple[float | None, float | None] = (0.6, 1.1),
    lambdas: tuple[float, ...] = (1e-4, 1e-3, 1e-2),
    optimizer: str = "sgd",
    studies: tuple[str, ...] = ("s/sgd",),
) -> dict[str, Any]:
    """A report in the shape `l2bn analyze --json` writes, with a planted k and λ range."""
    group = {
        "optimizer": optimizer,
        "norm": "bn",
        "dataset": "cifar10",
        "studies": list(studies),
        "k": {
            "estimate": {
                "value": k,
                "stderr": 0.1,
                "ci_low": ci[0],
                "ci_high": ci[1],
                "n": 3,
                "method": "bootstrap",
                "confidence": 0.9,
            },
            "intercept": -6.0,
            "r_squared": 0.99,
            "n_lambda": len(lambdas),
            "theory": 1.0,
            "verdict": "consistent",
        },
        "optima": [{"weight_decay": wd, "lr_opt": 0.1, "used": True} for wd in lambdas]
        + [{"weight_decay": 1.0, "lr_opt": 1e-6, "used": False}],  # an edge: not fitted
    }
    return {"l2bn_version": "0.1.0", "storage": "sqlite:///x.db", "groups": [group]}


def write_report(tmp_path: Path, report: dict[str, Any], name: str = "a.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return path


# --- the computation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("optimizer", "k"),
    [("adam", 0.5), ("rmsprop", 0.5), ("sgd", 1.0), ("adamw", 1.0), ("normalized-sgd", 0.0)],
)
def test_theory_transfer_matches_an_independent_computation(optimizer: str, k: float) -> None:
    t = transfer(1e-3, 5e-4, theory_k(optimizer), to_weight_decay=5e-3)
    # log η₂ = log η₁ − k (log λ₂ − log λ₁), computed apart from the module's formula.
    expected = math.exp(math.log(1e-3) - k * (math.log(5e-3) - math.log(5e-4)))
    assert t.estimate == pytest.approx(expected, rel=1e-12)
    assert t.low == t.high == pytest.approx(expected, rel=1e-12)  # the theory is exact
    assert t.target == "lr" and t.new_weight_decay == 5e-3 and t.new_lr == t.estimate
    assert not t.extrapolated and t.warnings == () and t.k.source == "theory"


def test_the_issue_example() -> None:
    t = transfer(1e-3, 5e-4, theory_k("adam"), to_weight_decay=5e-3)
    assert t.estimate == pytest.approx(1e-3 / math.sqrt(10), rel=1e-12)


def test_lambda_for_another_lr_inverts_the_transfer() -> None:
    k = theory_k("adam")
    t = transfer(1e-3, 5e-4, k, to_lr=3e-4)
    # η ∝ λ^-½ ⇒ λ₂ = λ₁ (η₁/η₂)²
    assert t.estimate == pytest.approx(5e-4 * (1e-3 / 3e-4) ** 2, rel=1e-12)
    assert t.target == "weight_decay" and t.new_lr == 3e-4
    back = transfer(3e-4, t.estimate, k, to_weight_decay=5e-4)
    assert back.estimate == pytest.approx(1e-3, rel=1e-12)


def test_the_band_comes_from_the_ends_of_the_ci() -> None:
    k = fitted_k(fitted_report(k=0.8, ci=(0.6, 1.1)), origin="a.json")
    assert (k.k, k.ci_low, k.ci_high, k.confidence) == (0.8, 0.6, 1.1, 0.9)
    assert k.lambda_range == (1e-4, 1e-2)  # the used optima only
    t = transfer(0.1, 1e-3, k, to_weight_decay=1e-2)  # λ ×10: η ÷ 10^k
    assert t.estimate == pytest.approx(0.1 * 10**-0.8)
    assert t.low == pytest.approx(0.1 * 10**-1.1) and t.high == pytest.approx(0.1 * 10**-0.6)
    # Towards a smaller λ the larger k gives the larger η: the band is still low ≤ high.
    t = transfer(0.1, 1e-3, k, to_weight_decay=1e-4)
    assert (t.low, t.estimate, t.high) == pytest.approx(
        (0.1 * 10**0.6, 0.1 * 10**0.8, 0.1 * 10**1.1)
    )
    # λ for another η: λ₂ = λ₁ (η₁/η₂)^(1/k) at each end.
    t = transfer(0.1, 1e-3, k, to_lr=0.01)
    assert t.estimate == pytest.approx(1e-3 * 10 ** (1 / 0.8))
    assert (t.low, t.high) == pytest.approx((1e-3 * 10 ** (1 / 1.1), 1e-3 * 10 ** (1 / 0.6)))


def test_a_ci_through_zero_leaves_the_lambda_band_unbounded() -> None:
    k = KSource("sgd", 0.3, -0.2, 0.8, 0.95, "fit")
    t = transfer(0.1, 1e-3, k, to_lr=0.01)
    assert t.estimate == pytest.approx(1e-3 * 10 ** (1 / 0.3))
    assert (t.low, t.high) == (0.0, math.inf)
    assert t.to_dict()["high"] is None and "unbounded" in t.warnings[0]
    json.dumps(t.to_dict(), allow_nan=False)  # valid JSON


def test_extrapolation_beyond_the_fitted_lambda_range_is_flagged() -> None:
    k = fitted_k(fitted_report(), origin="a.json")
    inside = transfer(0.1, 1e-3, k, to_weight_decay=1e-2)  # the range's end: inside
    assert not inside.extrapolated and inside.warnings == ()
    out = transfer(0.1, 1e-3, k, to_weight_decay=0.1)
    assert out.extrapolated and "outside the λ range [0.0001, 0.01]" in out.warnings[0]
    assert transfer(0.1, 1e-6, k, to_weight_decay=1e-3).extrapolated  # the tuned λ outside
    # --to-lr: the λ it gives is checked.
    assert transfer(0.1, 1e-3, k, to_lr=1e-5).extrapolated
    # The theory has no range: never extrapolated.
    assert not transfer(0.1, 1e-3, theory_k("sgd"), to_weight_decay=10.0).extrapolated


def test_fitted_k_picks_one_group() -> None:
    report = fitted_report()
    report["groups"].append(
        fitted_report(k=0.5, ci=(0.4, 0.6), optimizer="adam", studies=("s/adam",))["groups"][0]
    )
    assert fitted_k(report, "adam").k == 0.5
    assert fitted_k(report, study="s/sgd").k == 0.8
    with pytest.raises(AnalysisError, match=r"2 analyzed groups match.*--study"):
        fitted_k(report)
    with pytest.raises(AnalysisError, match="no analyzed group with optimizer 'momentum'"):
        fitted_k(report, "momentum")


# --- the command line ---------------------------------------------------------------------


def test_cli_table_and_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = [
        "transfer",
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--weight-decay",
        "5e-4",
        "--to-weight-decay",
        "5e-3",
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0 and err == ""
    assert "0.0003162" in out and "theory" in out
    code, out, err = run_cli([*args, "--json", "-"], capsys)
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["estimate"] == pytest.approx(1e-3 / math.sqrt(10), rel=1e-12)
    assert data["to"] == {"lr": data["estimate"], "weight_decay": 5e-3}
    assert data["k"]["value"] == 0.5 and data["extrapolated"] is False
    path = tmp_path / "t.json"
    code, out, _ = run_cli([*args, "--json", str(path)], capsys)
    assert code == 0 and json.loads(path.read_text()) == data


def test_cli_from_json_warns_once_when_extrapolating(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_report(tmp_path, fitted_report())
    base = ["transfer", "--from-json", str(path), "--lr", "0.1", "--weight-decay", "1e-3"]
    code, out, err = run_cli([*base, "--to-weight-decay", "1e-2", "--json", "-"], capsys)
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["estimate"] == pytest.approx(0.1 * 10**-0.8)
    assert data["low"] == pytest.approx(0.1 * 10**-1.1)
    assert data["high"] == pytest.approx(0.1 * 10**-0.6)
    code, out, err = run_cli([*base, "--to-weight-decay", "0.1"], capsys)
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("l2bn: warning: extrapolating"), err
    assert "band" in out  # a fitted k shows its band


def test_cli_with_a_fitted_study_and_its_json(
    planted: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The k of a real analysis, read from the storage and from `analyze --json` alike."""
    from l2bn.analysis.pipeline import AnalyzeConfig, analyze
    from l2bn.analysis.presenting.export import write_json

    report = tmp_path / "analysis.json"
    write_json(analyze(AnalyzeConfig(storage=planted, studies=("p/sgd",))), report)
    fit = json.loads(report.read_text())["groups"][0]["k"]["estimate"]
    tail = ["--lr", "0.1", "--weight-decay", "1e-3", "--to-weight-decay", "1e-2", "--json", "-"]
    code, out, err = run_cli(["transfer", "--from-json", str(report), *tail], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["k"]["value"] == fit["value"] and data["k"]["ci_low"] == fit["ci_low"]
    assert data["estimate"] == pytest.approx(0.1 * 10 ** -fit["value"])
    assert data["low"] <= data["estimate"] <= data["high"]
    assert data["k"]["value"] == pytest.approx(1.0, abs=0.05)  # planted k = 1
    code, out, err = run_cli(["transfer", "--storage", planted, "--study", "p/sgd", *tail], capsys)
    assert code == 0, err
    assert json.loads(out)["k"]["value"] == pytest.approx(fit["value"], abs=0.02)


def _bad_reports(tmp_path: Path) -> dict[str, Path]:
    two = fitted_report()
    two["groups"].append(fitted_report(studies=("t/sgd",))["groups"][0])
    nulls = fitted_report(k=None, ci=(None, None), lambdas=(1e-3,))
    return {
        "undetermined": write_report(tmp_path, nulls, "null.json"),
        "two": write_report(tmp_path, two, "two.json"),
        "good": write_report(tmp_path, fitted_report(), "good.json"),
        "notjson": write_report(tmp_path, {}, "x.json"),
        "shape": write_report(tmp_path, {"groups": "no"}, "shape.json"),
    }


_TO = ["--to-weight-decay", "1e-2"]
SECRET = "Sup3rS3cretPw"
_TUNED = ["--lr", "0.1", "--weight-decay", "1e-3"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--optimizer", "sgd", "--lr", "0", "--weight-decay", "1e-3", *_TO], "--lr must be a"),
        (["--optimizer", "sgd", "--lr", "-1", "--weight-decay", "1e-3", *_TO], "--lr must be"),
        (["--optimizer", "sgd", "--lr", "nan", "--weight-decay", "1e-3", *_TO], "--lr must be"),
        (
            ["--optimizer", "sgd", "--lr", "0.1", "--weight-decay", "0", *_TO],
            "--weight-decay must be a finite number > 0 (η* ∝ λ^-k is undefined at λ = 0)",
        ),
        (["--optimizer", "sgd", *_TUNED, "--to-weight-decay", "-1"], "--to-weight-decay must"),
        (["--optimizer", "sgd", *_TUNED, "--to-weight-decay", "inf"], "--to-weight-decay must"),
        (["--optimizer", "sgd", *_TUNED, "--to-lr", "0"], "--to-lr must be"),
        (["--optimizer", "sgd", *_TUNED, *_TO, "--to-lr", "0.1"], "give exactly one of"),
        (["--optimizer", "sgd", *_TUNED], "give exactly one of --to-weight-decay"),
        (["--optimizer", "adagrad", *_TUNED, *_TO], "'adagrad' is not one of"),
        ([*_TUNED, *_TO], "--optimizer is needed for the theory's k"),
        (["--optimizer", "sgd", "--study", "s/sgd", *_TUNED, *_TO], "--study needs --storage"),
        (["--optimizer", "normalized-sgd", *_TUNED, "--to-lr", "0.01"], "k = 0 for normalized"),
        (["--lr", "x", "--weight-decay", "1e-3", *_TO], "Invalid value for '--lr'"),
        (
            ["--optimizer", "sgd", *_TUNED, *_TO, "--json", "/nonexistent/dir/t.json"],
            "folder /nonexistent/dir does not exist",
        ),
        (["--from-json", "{undetermined}", *_TUNED, *_TO], "k of s/sgd (sgd) in"),
        (["--from-json", "{two}", *_TUNED, *_TO], "pick one with --study"),
        (
            ["--from-json", "{good}", "--optimizer", "adam", *_TUNED, *_TO],
            "no analyzed group with optimizer 'adam'",
        ),
        (["--from-json", "{good}", "--study", "nope", *_TUNED, *_TO], "study 'nope'"),
        (["--from-json", "{notjson}", *_TUNED, *_TO], "not an `l2bn analyze --json` report"),
        (["--from-json", "{shape}", *_TUNED, *_TO], "not an `l2bn analyze --json` report"),
        (["--from-json", "/nonexistent/a.json", *_TUNED, *_TO], "no such file"),
        (
            ["--from-json", "{good}", "--storage", "sqlite:///x.db", *_TUNED, *_TO],
            "one of --storage and --from-json",
        ),
        (["--storage", "sqlite:////nonexistent/x.db", *_TUNED, *_TO], "no such storage file"),
        (
            ["--storage", f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:1/x", *_TUNED, *_TO],
            "bob:***@127.0.0.1",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    files = _bad_reports(tmp_path)
    args = [a.format(**files) if a.startswith("{") else a for a in args]
    code, _, err = run_cli(["transfer", *args], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("l2bn: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in err and SECRET not in err


def test_not_json_at_all_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    code, _, err = run_cli(["transfer", "--from-json", str(path), *_TUNED, *_TO], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot read it as JSON" in err


def test_library_errors_are_l2bn_errors() -> None:
    with pytest.raises(ConfigError):
        transfer(1.0, 1.0, theory_k("sgd"))
    with pytest.raises(ConfigError):
        theory_k("adagrad")
    with pytest.raises(ConfigError):
        fitted_k([], origin="x")  # type: ignore[arg-type]

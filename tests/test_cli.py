"""The command line as a user meets it: exit codes, one-line errors, the JSON record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import run_cli

TINY = ["--dataset", "synthetic", "--width", "4", "--epochs", "1"]


def test_one_epoch_end_to_end_writes_the_whole_record(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "l2bn",
            "train",
            *TINY,
            "--optimizer",
            "adam",
            "--lr",
            "1e-3",
            "--weight-decay",
            "5e-4",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"COLUMNS": "120"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "conv1" in proc.stdout and "test error" in proc.stdout  # the final table
    record = json.loads(out.read_text())
    assert record["config"]["optimizer"] == "adam" and record["config"]["lr"] == 1e-3
    assert record["l2bn_version"]
    assert len(record["history"]) == 1
    epoch = record["history"][0]
    assert set(epoch) == {
        "epoch",
        "lr",
        "train_loss",
        "train_error",
        "val_error",
        "val_loss",
        "seconds",
        "layers",
    }
    assert set(epoch["layers"]) == {"conv1", "conv2", "conv3", "conv4", "fc"}
    assert set(epoch["layers"]["conv1"]) == {
        "norm",
        "unit_norm",
        "eff_lr",
        "angle",
        "angle_eq",
        "radial",
        "tangential",
        "grad_norm",
        "balance",
        "update_corr",
    }
    assert 0 <= record["test_error"] <= 1 and record["diverged"] is False


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lr", "-1"], "lr must be a finite number > 0"),
        (["--lr", "nan"], "lr must be a finite number > 0"),
        (["--weight-decay", "-0.1"], "weight-decay"),
        (["--optimizer", "adagrad"], "'adagrad' is not one of"),
        (["--epochs", "0"], "epochs must be an integer"),
        (["--val-fraction", "1.5"], "val-fraction"),
        (["--lr-drops", "0.8,0.5"], "lr-drops"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "no CIFAR-10 found"),
        (["--json", "/nonexistent/dir/out.json"], "folder /nonexistent/dir does not exist"),
        (["--batch-size", "100000"], "exceeds the"),
        (["--no-such-flag"], "No such option"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["train", *TINY, *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("l2bn: error:") and needle in lines[0]
    assert "Traceback" not in err


def test_unwritable_json_path_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions
        pytest.skip("running as a user that can write anywhere")
    code, _, err = run_cli(["train", *TINY, "--json", str(locked / "x.json")], capsys)
    assert code == 2 and "not writable" in err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["--debug", "train", *TINY, "--lr", "-1"], capsys)
    assert code == 2
    assert "Traceback" in err and "ConfigError" in err


def test_json_is_not_written_when_training_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    code, _, _ = run_cli(
        ["train", *TINY, "--data-dir", str(tmp_path), "--dataset", "cifar10", "--json", str(out)],
        capsys,
    )
    assert code == 2 and not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spelling", ["none", "", [], ()])
def test_lr_drops_none_means_constant_lr(spelling: object) -> None:
    from l2bn.sweep.spec import parse_settings, sweep_from_cli
    from l2bn.train.config import TrainConfig

    config = TrainConfig(lr_drops=spelling, epochs=10)  # type: ignore[arg-type]
    assert config.lr_drops == () and {config.lr_at(e) for e in range(10)} == {config.lr}
    # `l2bn sweep --set lr_drops=none` (once exit 1, "unexpected ValueError"): no drops.
    settings = parse_settings(["lr=[0.1]", "weight_decay=[0.01]", "lr_drops=none"])
    sweep = sweep_from_cli(None, ["sgd"], settings)
    assert sweep.optimizers["sgd"].base_config().lr_drops == ()
    assert TrainConfig(lr_drops="0.5, 0.8").lr_drops == (0.5, 0.8)  # the CLI's text form

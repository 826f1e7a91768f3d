"""A corpus of bad inputs across `train`, `sweep`, `status` and `analyze`.

Each one must give exactly one line on stderr, exit code 2, no traceback, no password, and
write nothing: no new file anywhere under the test's folder (the working directory included,
where the default storage `l2bn.db` would land), and an existing storage byte for byte as it
was. The CLI runs in-process (fast); the variants are data.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
from sweep.helpers import TINY as TINY_SWEEP

from l2bn.cli import main

SECRET = "Sup3rS3cretPw"
TRAIN = ["train", "--dataset", "synthetic", "--width", "4", "--epochs", "1"]
GOOD_SWEEP = TINY_SWEEP.format(n=2, epochs=1)
TWO_OPTIMIZERS = GOOD_SWEEP + "\n[optimizers.adam]\n"
# A grid without the stored points (a superset extends the study: tests/sweep/test_study.py).
OTHER_GRID = GOOD_SWEEP.replace("max = 1.0, num = 2", "max = 2.0, num = 2")


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]  # {tmp}: the test's folder; {sweep}: sweep.toml there; {db}: x.db there
    needle: str  # a piece of the one line on stderr
    sweep: str | bytes = GOOD_SWEEP  # what sweep.toml holds
    study: bool = False  # x.db holds the tiny sweep's study (its points queued, none run)
    files: tuple[tuple[str, str], ...] = ()  # (name, text) written in the test's folder


# `analyze --csv` exports cut down: columns missing, and a single λ.
_CSV_HEAD = "study,trial,optimizer,norm,dataset,lr,weight_decay,seed,val_error,diverged"
NO_VALUE_CSV = "study,trial,optimizer,lr,weight_decay,seed\na/sgd,0,sgd,0.1,0.01,0\n"
ONE_LAMBDA_CSV = _CSV_HEAD + "".join(
    f"\na/sgd,{i},sgd,bn,cifar10,{lr},0.01,{s},{0.3 + 0.01 * i},False"
    for i, (lr, s) in enumerate((lr, s) for lr in (0.01, 0.1, 1.0) for s in (0, 1))
)


CASES = [
    # --- train: numbers, choices, paths, data -----------------------------------------------
    Case("train-lr-not-a-number", [*TRAIN, "--lr", "abc"], "Invalid value for '--lr'"),
    Case("train-lr-negative", [*TRAIN, "--lr", "-1"], "lr must be a finite number > 0"),
    Case("train-lr-inf", [*TRAIN, "--lr", "inf"], "lr must be a finite number > 0"),
    Case("train-epochs-zero", [*TRAIN, "--epochs", "0"], "epochs must be an integer"),
    Case("train-batch-size-zero", [*TRAIN, "--batch-size", "0"], "batch-size must be"),
    Case("train-val-fraction", [*TRAIN, "--val-fraction", "1.5"], "val-fraction must be"),
    Case("train-lr-drops-text", [*TRAIN, "--lr-drops", "half"], "lr-drops 'half'"),
    Case("train-bad-optimizer", [*TRAIN, "--optimizer", "adagrad"], "'adagrad' is not one of"),
    Case("train-bad-precision", [*TRAIN, "--precision", "fp8"], "'fp8' is not one of"),
    Case("train-unknown-flag", [*TRAIN, "--learning-rate", "0.1"], "No such option"),
    Case(
        "train-no-cifar-here",
        ["train", "--dataset", "cifar10", "--data-dir", "{tmp}/nowhere"],
        "no CIFAR-10 found",
    ),
    Case(
        "train-malicious-pickle",
        ["train", "--dataset", "cifar10", "--data-dir", "{tmp}/evil", "--epochs", "1"],
        "refused to load global posix.system",
    ),
    Case("train-json-no-folder", [*TRAIN, "--json", "{tmp}/no/dir/r.json"], "does not exist"),
    Case("train-json-is-a-folder", [*TRAIN, "--json", "{tmp}"], "is a folder"),
    Case("train-init-scale-zero", [*TRAIN, "--init-scale", "0"], "init-scale must be a finite"),
    Case("train-init-scale-nan", [*TRAIN, "--init-scale", "nan"], "init-scale must be a finite"),
    Case("train-bad-schedule", [*TRAIN, "--schedule", "cosine"], "'cosine' is not one of"),
    Case("train-decay-fraction", [*TRAIN, "--decay-fraction", "1.5"], "decay-fraction must be"),
    # --- sweep: files, grids, flags, URLs ---------------------------------------------------
    Case("sweep-file-missing", ["sweep", "{tmp}/missing.toml"], "does not exist"),
    Case("sweep-file-is-a-folder", ["sweep", "{tmp}"], "cannot read sweep file"),
    Case("sweep-bad-toml", ["sweep", "{sweep}"], "not valid TOML", sweep="name = ["),
    Case("sweep-not-utf8", ["sweep", "{sweep}"], "not a text file", sweep=b'name = "\xff"\n'),
    Case(
        "sweep-unknown-key",
        ["sweep", "{sweep}"],
        "unknown key 'lrr'",
        sweep="lrr = 1\n" + GOOD_SWEEP,
    ),
    Case(
        "sweep-grid-min-above-max",
        ["sweep", "{sweep}"],
        "min 1.0 must be < max 0.1",
        sweep=GOOD_SWEEP.replace("min = 0.01, max = 1.0", "min = 1.0, max = 0.1"),
    ),
    Case(
        "sweep-negative-seeds",
        ["sweep", "{sweep}"],
        "seeds must be",
        sweep=GOOD_SWEEP.replace("seeds = [0]", "seeds = -1"),
    ),
    # A word where fractions belong, by --set or in the file (was: exit 1, "unexpected ValueError").
    Case("sweep-set-lr-drops-word", ["sweep", "{sweep}", "--set", "lr_drops=half"], "lr-drops"),
    Case(
        "sweep-file-lr-drops-word",
        ["sweep", "{sweep}"],
        "lr-drops 'half'",
        sweep='lr_drops = "half"\n' + GOOD_SWEEP,
    ),
    Case("sweep-set-lr-drops-number", ["sweep", "{sweep}", "--set", "lr_drops=3"], "lr-drops 3"),
    Case("sweep-optimizer-not-in-file", ["sweep", "{sweep}", "--optimizer", "adamw"], "adamw"),
    Case("sweep-optimizer-unknown", ["sweep", "{sweep}", "--optimizer", "sgdx"], "'sgdx'"),
    Case(
        "sweep-study-with-two-optimizers",
        ["sweep", "{sweep}", "--study", "mine"],
        "--study names one study",
        sweep=TWO_OPTIMIZERS,
    ),
    Case("sweep-workers-zero", ["sweep", "{sweep}", "--workers", "0"], "--workers"),
    Case("sweep-epochs-negative", ["sweep", "{sweep}", "--epochs", "-2"], "--epochs"),
    Case("sweep-heartbeat-zero", ["sweep", "{sweep}", "--heartbeat", "0"], "--heartbeat"),
    Case(
        "sweep-storage-not-a-url",
        ["sweep", "{sweep}", "--storage", f"not a url {SECRET}"],
        "not a database URL",
    ),
    Case(
        "sweep-storage-unknown-kind",
        ["sweep", "{sweep}", "--storage", "nosuchdb://x/y"],
        "unknown database kind",
    ),
    Case(
        "sweep-storage-no-folder",
        ["sweep", "{sweep}", "--storage", "sqlite:///{tmp}/no/folder/x.db"],
        "does not exist",
    ),
    Case(
        "sweep-storage-unreachable-with-password",
        ["sweep", "{sweep}", "--storage", f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:1/x"],
        "cannot open storage postgresql+psycopg://bob:***@127.0.0.1:1/x",
    ),
    Case(
        "sweep-changed-grid-same-study",
        ["sweep", "{sweep}", "--storage", "sqlite:///{db}"],
        "made by a different sweep definition",
        sweep=OTHER_GRID,
        study=True,
    ),
    # Sweep keys: the objective, the ties to λ, and TrainConfig settings given as sweep keys.
    Case(
        "sweep-objective-unknown",
        ["sweep", "{sweep}"],
        "objective 'val_acc' is not one of: val_error, val_loss",
        sweep='objective = "val_acc"\n' + GOOD_SWEEP,
    ),
    Case(
        "sweep-set-objective-unknown",
        ["sweep", "{sweep}", "--set", "objective=accuracy"],
        "objective 'accuracy' is not one of: val_error, val_loss",
    ),
    Case(
        "sweep-set-reference-weight-decay-zero",
        ["sweep", "{sweep}", "--set", "reference_weight_decay=0"],
        "reference_weight_decay must be a number > 0",
    ),
    Case(
        "sweep-set-init-scale-exponent-word",
        ["sweep", "{sweep}", "--set", "init_scale_exponent=half"],
        "init_scale_exponent must be a number, got 'half'",
    ),
    Case(
        "sweep-set-schedule-unknown",
        ["sweep", "{sweep}", "--set", "schedule=cosine"],
        "schedule 'cosine' is not one of: step, wsd, constant",
    ),
    Case(
        "sweep-init-scale-negative",
        ["sweep", "{sweep}"],
        "init-scale must be a finite number > 0",
        sweep="init_scale = -2.0\n" + GOOD_SWEEP,
    ),
    Case(
        "sweep-changed-objective-same-study",
        ["sweep", "{sweep}", "--storage", "sqlite:///{db}", "--set", "objective=val_loss"],
        "its training settings differ: objective",
        study=True,
    ),
    Case(
        "sweep-read-only-storage",
        ["sweep", "{sweep}", "--storage", "sqlite:///file:{db}?mode=ro&uri=true"],
        "attempt to write a readonly database",
        study=True,
    ),
    # --- status -------------------------------------------------------------------------------
    Case("status-no-storage-file", ["status", "{sweep}"], "no file l2bn.db"),
    Case(
        "status-no-such-study",
        ["status", "{sweep}", "--storage", "sqlite:///{db}", "--study", "nosuch"],
        "no study 'nosuch'",
        study=True,
    ),
    # --- analyze -----------------------------------------------------------------------------
    Case(
        "analyze-empty-study",
        ["analyze", "--storage", "sqlite:///{db}"],
        "tiny/sgd: no complete trials",
        study=True,
    ),
    Case(
        "analyze-no-such-study",
        ["analyze", "--storage", "sqlite:///{db}", "--study", "nosuch"],
        "no study named 'nosuch'",
        study=True,
    ),
    Case("analyze-no-storage-file", ["analyze"], "no such storage file"),
    Case("analyze-bootstrap-negative", ["analyze", "--bootstrap", "-1"], "--bootstrap"),
    Case("analyze-equilibrium-nan", ["analyze", "--equilibrium", "nan"], "--equilibrium"),
    Case(
        "analyze-json-no-folder",
        ["analyze", "--storage", "sqlite:///{db}", "--json", "{tmp}/no/dir/r.json"],
        "does not exist",
        study=True,
    ),
    Case(
        "analyze-csv-missing-columns",
        ["analyze", "--from-csv", "{tmp}/cut.csv"],
        "missing column(s) val_error",
        files=(("cut.csv", NO_VALUE_CSV),),
    ),
    Case(
        "analyze-csv-one-lambda",
        ["analyze", "--from-csv", "{tmp}/one.csv"],
        "a single weight_decay value (0.01)",
        files=(("one.csv", ONE_LAMBDA_CSV),),
    ),
    Case(
        "analyze-unreachable-with-password",
        ["analyze", "--storage", f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:1/x"],
        "postgresql+psycopg://bob:***@127.0.0.1:1/x",
    ),
]


class _Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (f"touch {self.marker}",))


def _setup(tmp: Path, case: Case) -> None:
    for name, text in case.files:
        (tmp / name).write_text(text)
    sweep = tmp / "sweep.toml"
    if isinstance(case.sweep, bytes):
        sweep.write_bytes(case.sweep)
    else:
        sweep.write_text(case.sweep)
    if case.study:
        import tomllib

        from l2bn.sweep.spec import parse_sweep
        from l2bn.sweep.storage import open_storage
        from l2bn.sweep.study import prepare_study

        storage = open_storage(f"sqlite:///{tmp / 'x.db'}")
        prepare_study(
            storage, parse_sweep({"name": "tiny", **tomllib.loads(GOOD_SWEEP)}).select(None)[0]
        )
        storage.engine.dispose()
    # A CIFAR-10 folder whose first batch runs a command when unpickled without restriction.
    evil = tmp / "evil" / "cifar-10-batches-py"
    evil.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4"):
        payload = {"data": _Evil(tmp / "pwned"), "labels": [0]}
        (evil / name).write_bytes(pickle.dumps(payload, protocol=2))
    for name in ("data_batch_5", "test_batch"):
        (evil / name).write_bytes(pickle.dumps({"data": [], "labels": []}, protocol=2))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_corpus_is_big_and_covers_every_command() -> None:
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.args[0] for c in CASES} == {"train", "sweep", "status", "analyze"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case: Case,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for var in ("L2BN_STORAGE", "L2BN_DATA"):
        monkeypatch.delenv(var, raising=False)
    _setup(tmp_path, case)
    cwd = tmp_path / "cwd"  # where the default storage (sqlite:///l2bn.db) would be created
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = _snapshot(tmp_path)
    args = [
        a.format(tmp=tmp_path, sweep=tmp_path / "sweep.toml", db=tmp_path / "x.db")
        for a in case.args
    ]
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    assert info.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("l2bn: error: ") and case.needle in lines[0], err
    assert "Traceback" not in err + out and SECRET not in err + out
    assert _snapshot(tmp_path) == before  # nothing created, nothing changed
    assert not (tmp_path / "pwned").exists()

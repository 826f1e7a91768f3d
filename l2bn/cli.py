"""The command line: thin Typer commands that build a config and call one library function.

This module alone prints errors. An :class:`~l2bn.errors.L2bnError` (or a usage error) is one
line on stderr and exit code 2; anything else is a bug: one line and exit code 1. ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from l2bn import __version__
from l2bn.analysis.settings import IntervalKind, Metric
from l2bn.errors import L2bnError
from l2bn.files import check_writable, write_json
from l2bn.train.config import (
    DatasetName,
    DeviceName,
    Graph,
    Head,
    Norm,
    OptimizerName,
    Precision,
    Schedule,
    TrainConfig,
    parse_lr_drops,
)

app = typer.Typer(
    name="l2bn",
    help="Learning rate and L2 weight decay for normalized networks (van Laarhoven 2017).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
) -> None:
    # --debug is read in main() (anywhere on the line); declared here so --help lists it.
    pass


@app.command()
def version() -> None:
    """Print l2bn's version."""
    console.print(__version__)


@app.command()
def download(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where to put cifar-10-batches-py/ (default: $L2BN_DATA, then ./data)."),
    ] = None,
) -> None:
    """Fetch CIFAR-10 (170 MB, md5-checked) unless it is already there."""
    from l2bn.train.data import ensure_cifar10

    folder = ensure_cifar10(TrainConfig(data_dir=data_dir).resolved_data_dir())
    console.print(f"CIFAR-10 is in {folder}")


# --- train --------------------------------------------------------------------------------


_D = TrainConfig()  # every default below is TrainConfig's: one place, not two


@app.command()
def train(
    optimizer: Annotated[
        OptimizerName,
        typer.Option(
            help="sgd | momentum | nesterov (0.9) | rmsprop | adam | adamw | normalized-sgd."
        ),
    ] = _D.optimizer,
    lr: Annotated[
        float, typer.Option(help="η, the initial learning rate (then as --schedule says).")
    ] = _D.lr,
    weight_decay: Annotated[
        float,
        typer.Option(
            help="λ, PyTorch weight_decay (gradient += λw; adamw: decoupled w -= ηλw). "
            "The paper's penalty λ‖w‖² is weight_decay 2λ."
        ),
    ] = _D.weight_decay,
    epochs: Annotated[int, typer.Option(help="Epochs (the paper: 100).")] = _D.epochs,
    batch_size: Annotated[int, typer.Option(help="Batch size (the paper: 128).")] = _D.batch_size,
    width: Annotated[int, typer.Option(help="c: the convs have widths c, 2c, 4c, 8c.")] = _D.width,
    norm: Annotated[Norm, typer.Option(help="Normalization after each conv.")] = _D.norm,
    head: Annotated[
        Head, typer.Option(help="linear, or bn: bias-free linear + BatchNorm on the logits.")
    ] = _D.head,
    dataset: Annotated[
        DatasetName, typer.Option(help="cifar10, synthetic (in memory), or tracking (toy).")
    ] = _D.dataset,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder holding cifar-10-batches-py/ (default: $L2BN_DATA, then ./data)."
        ),
    ] = None,
    download: Annotated[
        bool, typer.Option("--download", help="Fetch CIFAR-10 into --data-dir if it is missing.")
    ] = False,
    val_fraction: Annotated[
        float, typer.Option(help="Share of the training set held out for validation.")
    ] = _D.val_fraction,
    augment: Annotated[
        bool, typer.Option(help="Random translation ≤ 4 px and horizontal flips.")
    ] = _D.augment,
    schedule: Annotated[
        Schedule,
        typer.Option(
            help="How η moves: step (÷10 at each --lr-drops fraction, the paper's), wsd "
            "(constant, then linearly to 0 over the last --decay-fraction of the steps), "
            "or constant."
        ),
    ] = _D.schedule,
    lr_drops: Annotated[
        str,
        typer.Option(help="step: fractions of training where η ÷= 10, comma-separated, or 'none'."),
    ] = ",".join(f"{x:g}" for x in _D.lr_drops),
    decay_fraction: Annotated[
        float,
        typer.Option(help="wsd: the share of all steps, in (0, 1], over which η falls to 0."),
    ] = _D.decay_fraction,
    init_scale: Annotated[
        float,
        typer.Option(
            help="S > 0: multiply every scale-invariant weight by S after the default "
            "initialization (‖w₀‖ × S; the function is unchanged, the early effective η is "
            "S² (SGD) or S (Adam) times smaller)."
        ),
    ] = _D.init_scale,
    scale_eps: Annotated[
        bool,
        typer.Option(
            "--scale-eps",
            help="The symmetry control: BN's ε × S² and Adam's ε ÷ S (S: --init-scale), so "
            "that runs related by the optimizer's map are exact copies (sweeps/symmetry.toml).",
        ),
    ] = _D.scale_eps,
    decay_all: Annotated[
        bool, typer.Option("--decay-all", help="Also decay normalization γ/β and biases.")
    ] = _D.decay_all,
    affine: Annotated[
        bool,
        typer.Option(
            help="Learnable normalization γ/β (and WN gains), as in the paper; --no-affine "
            "freezes them, so that every trained parameter is scale-invariant."
        ),
    ] = _D.affine,
    device: Annotated[
        DeviceName,
        typer.Option(
            help="auto: $L2BN_DEVICE when set (the Docker image: cuda), else cuda when visible, "
            "else cpu. A GPU asked for that torch cannot use is an error, never the CPU."
        ),
    ] = _D.device,
    precision: Annotated[
        Precision,
        typer.Option(
            help="auto: bf16 where the hardware has native bf16, else fp32. fp32 is IEEE fp32 "
            "on CUDA too; tf32: fp32 with TF32 tensor-core matmuls and convolutions (CUDA)."
        ),
    ] = _D.precision,
    graph: Annotated[
        Graph,
        typer.Option(
            help="auto: on for images on CUDA, else off. on: the step (forward, backward, "
            "optimizer, meter) captured as one CUDA graph, η's factor and Adam's bias "
            "corrections on the device (a CPU runs that step eagerly). off: every kernel "
            "launched from Python, host scalars (the CPU's recorded numeric path)."
        ),
    ] = _D.graph,
    seed: Annotated[
        int, typer.Option(help="Seed for initialization, data order, augmentation.")
    ] = _D.seed,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Write the whole record (config, per-epoch norms and updates) here."
        ),
    ] = None,
) -> None:
    """Train one network and record every layer's weight norm and update each epoch."""
    from l2bn.render import TrainProgress
    from l2bn.train.engine import train as run_training

    config = TrainConfig(
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        epochs=epochs,
        batch_size=batch_size,
        width=width,
        norm=norm,
        head=head,
        dataset=dataset,
        data_dir=data_dir,
        val_fraction=val_fraction,
        augment=augment,
        schedule=schedule,
        lr_drops=parse_lr_drops(lr_drops),
        decay_fraction=decay_fraction,
        init_scale=init_scale,
        scale_eps=scale_eps,
        decay_all=decay_all,
        affine=affine,
        device=device,
        precision=precision,
        graph=graph,
        seed=seed,
    )
    if json_path is not None:
        check_writable(json_path)
    with TrainProgress(config.epochs) as progress:
        result = run_training(
            config, on_epoch=progress.epoch, on_batch=progress.batch, download=download
        )
    from l2bn.render import render_result

    console.print(render_result(result))
    if json_path is not None:
        write_json(json_path, result.to_dict())
        console.print(f"record written to {json_path}")


# --- sweep ----------------------------------------------------------------------------------

SweepFile = Annotated[
    Path | None,
    typer.Argument(
        help="Sweep definition (TOML), e.g. sweeps/cpu.toml; optional with --optimizer and --set.",
        show_default=False,
    ),
]
SweepSettings = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a sweep key, TOML value (repeatable): --set epochs=5 "
        "--set 'lr={min=1e-3, max=1, num=7}' --set dataset=synthetic.",
    ),
]
SweepOptimizers = Annotated[
    list[OptimizerName] | None,
    typer.Option("--optimizer", help="Run only this optimizer's study (repeatable)."),
]
SweepStorage = Annotated[
    str,
    typer.Option(
        envvar="L2BN_STORAGE",  # keeps a password off the command line (ps, job scripts)
        help="SQLAlchemy URL of the Optuna storage (sqlite:///…, postgresql+psycopg://…).",
    ),
]
SweepStudy = Annotated[
    str | None,
    typer.Option("--study", help="Study name (default <sweep>/<optimizer>; one optimizer only)."),
]


@app.command("sweep")
def sweep_run(
    path: SweepFile = None,
    optimizer: SweepOptimizers = None,
    settings: SweepSettings = None,
    storage: SweepStorage = "sqlite:///l2bn.db",
    workers: Annotated[int, typer.Option(min=1, help="Worker processes on this machine.")] = 1,
    study: SweepStudy = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Override the sweep file's epochs.")
    ] = None,
    heartbeat: Annotated[
        int,
        typer.Option(
            min=1, help="Seconds between a running trial's heartbeats; silent 4× this = lost."
        ),
    ] = 30,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="Torch threads per worker (default: cores ÷ workers)."),
    ] = None,
    fuse: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Most grid points each worker trains at once as one fused net, each its own "
            "trial; rounds are evened out (default: 1 on CPU, where fusing is slower, 16 on "
            "CUDA).",
        ),
    ] = None,
) -> None:
    """Run an η × λ grid as Optuna studies (one per optimizer): resumable, many workers, every
    grid point trained exactly once."""
    import optuna

    from l2bn.render import LiveProgress, summary_line
    from l2bn.sweep.runner import SweepOutcomes, check_spec, run_sweep, worker_specs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    specs = worker_specs(
        path, optimizer or [], storage, study, settings or [], epochs, heartbeat, threads, fuse
    )
    for spec in specs:  # every study, before the first one writes anything
        check_spec(spec, workers)
    outcomes = SweepOutcomes()
    for spec in specs:
        with LiveProgress(console) as live:
            result = run_sweep(spec, workers=workers, on_status=live)
        for message in outcomes.add(result, summary_line(result.status).plain):
            err_console.print(f"l2bn: worker error (crash): {message}", soft_wrap=True)
        if result.interrupted:
            for message in outcomes.stopped:
                err_console.print(f"l2bn: worker error: {message}", soft_wrap=True)
            err_console.print("l2bn: interrupted; run the same command again to resume")
            sys.exit(130)  # not typer.Exit: with standalone_mode=False click returns its code
    outcomes.check()
    for message in outcomes.stopped:  # the other workers completed the grid
        err_console.print(f"l2bn: warning: a worker stopped: {message}", soft_wrap=True)


@app.command("status")
def sweep_status(
    path: SweepFile = None,
    optimizer: SweepOptimizers = None,
    settings: SweepSettings = None,
    storage: SweepStorage = "sqlite:///l2bn.db",
    study: SweepStudy = None,
) -> None:
    """Print a sweep's grid: each point's state (done, diverged, running, failed, waiting)."""
    from l2bn.render import status_table, summary_line
    from l2bn.sweep.runner import worker_specs
    from l2bn.sweep.status import status_of

    for spec in worker_specs(path, optimizer or [], storage, study, settings or []):
        status = status_of(spec.storage, spec.sweep, spec.study_name)
        console.print(status_table(status))
        console.print(summary_line(status))


@app.command()
def analyze(
    ctx: typer.Context,
    storage: Annotated[
        str,
        typer.Option(
            envvar="L2BN_STORAGE",  # as for sweep and status
            help="SQLAlchemy URL of the Optuna storage holding the sweep's studies (with "
            "--from-csv, read beside the exports only when given on the command line).",
        ),
    ] = "sqlite:///l2bn.db",
    study: Annotated[
        list[str] | None,
        typer.Option(
            "--study",
            help="Study to analyze (repeatable; default: every study with user attr optimizer).",
        ),
    ] = None,
    equilibrium: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Where no cell has measured update records (older studies): norm fits use "
            "cells with c·η·λ·T ≥ this (T: steps in the first LR phase; c = 1/(1−momentum) "
            "= 10 for momentum and nesterov, 2 for adamw, else 1). Otherwise the cells "
            "measured in equilibrium (norms stationary over the tail of phase 1).",
        ),
    ] = 5.0,
    metric: Annotated[
        Metric | None,
        typer.Option(
            help="Objective whose optimum η* is located (val_loss needs studies that recorded "
            "it). Default: the studies' stored objective when a group's studies agree, else "
            "val_error.",
            show_default=False,
        ),
    ] = None,
    margin: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Verdict margin δ for k: 'equivalent' when the CI lies inside theory ± δ, "
            "'different' when entirely outside, else 'inconclusive'.",
        ),
    ] = 0.1,
    norm_margin: Annotated[
        float, typer.Option(min=0.0, help="The same margin for the norm exponents p and q.")
    ] = 0.05,
    interval: Annotated[
        IntervalKind,
        typer.Option(
            help="Interval of the floor estimators' k (cross-checks; the primary's is always "
            "the jackknife): jackknife (delete-one-seed, Student t; calibrated) or bootstrap "
            "(cluster bootstrap over seeds; under-covers with few seeds)."
        ),
    ] = IntervalKind.jackknife,
    bootstrap: Annotated[
        int, typer.Option(min=1, help="Resamples of --interval bootstrap.")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap (same data, same CI).")] = 0,
    from_csv: Annotated[
        list[Path] | None,
        typer.Option(
            "--from-csv",
            help="Analyze `analyze --csv` exports instead of the storage (repeatable: the parts "
            "of one run; --study selects their studies).",
        ),
    ] = None,
    registration: Annotated[
        Path | None,
        typer.Option(
            "--registration",
            help="Judge the [registration] table of this sweep file (default: the studies' "
            "own registered reading rule; --from-csv exports carry none).",
        ),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the whole report as JSON here.")
    ] = None,
    csv_path: Annotated[
        Path | None,
        typer.Option("--csv", help="Write one row per trial, with per-epoch layer norms, here."),
    ] = None,
    plots: Annotated[
        Path | None, typer.Option("--plots", help="Write PNG figures into this folder.")
    ] = None,
    report_path: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write one self-contained HTML page (tables, verdicts, warnings, every figure "
            "embedded, the settings and studies behind them) here: no server, can be mailed.",
        ),
    ] = None,
) -> None:
    """Read k of η* ∝ λ^-k from the whole error surface (its collapse along η·λ^k), the norm law
    and equilibrium per optimizer; compare with theory and the registered reading rule."""
    from l2bn.analysis.pipeline import AnalyzeConfig, run_analysis
    from l2bn.render import render_report

    # A storage from L2BN_STORAGE or the default is not read beside exports: only one the
    # command line names (the Docker image sets L2BN_STORAGE for every command).
    source = ctx.get_parameter_source("storage")  # click's ParameterSource (typer vendors it)
    storage_too = bool(from_csv) and getattr(source, "name", None) == "COMMANDLINE"
    for path in (json_path, csv_path, report_path):
        if path is not None:
            check_writable(path)
    config = AnalyzeConfig(
        storage=storage,
        studies=tuple(study or ()),
        equilibrium=equilibrium,
        interval=interval.value,
        bootstrap=bootstrap,
        seed=seed,
        margin=margin,
        norm_margin=norm_margin,
        metric=None if metric is None else metric.value,
        from_csv=from_csv[0] if from_csv else None,
        more_csv=tuple(from_csv[1:]) if from_csv else (),
        storage_too=storage_too,
        registration_path=registration,
        json_path=json_path,
        csv_path=csv_path,
        plots_dir=plots,
        report_path=report_path,
    )
    console.print(render_report(run_analysis(config)))


# --- transfer -------------------------------------------------------------------------------


@app.command()
def transfer(
    lr: Annotated[float, typer.Option(help="η, the tuned learning rate.", show_default=False)],
    weight_decay: Annotated[
        float, typer.Option(help="λ, the weight_decay η was tuned at.", show_default=False)
    ],
    to_weight_decay: Annotated[
        float | None, typer.Option(help="The new λ: print the η to use with it.")
    ] = None,
    to_lr: Annotated[
        float | None, typer.Option(help="The new η: print the λ to use with it.")
    ] = None,
    optimizer: Annotated[
        OptimizerName | None,
        typer.Option(
            help="Needed for the theory's k; optional with a fitted k, whose group it picks.",
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Use the k fitted on this storage's studies (analyzed now) instead of the "
            "theory's. No L2BN_STORAGE fallback: without it, the theory's k is used.",
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            help="With --storage: analyze this study only; with --from-json: the group holding it."
        ),
    ] = None,
    from_json: Annotated[
        Path | None,
        typer.Option("--from-json", help="Use the k of a previous `l2bn analyze --json` report."),
    ] = None,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Write the result as JSON here ('-': to stdout, no table)."),
    ] = None,
) -> None:
    """Carry a tuned (η, λ) to another λ, or another η, along η* ∝ λ^-k (theory's k, or a
    fitted one with the band from its CI)."""
    import json

    from l2bn.analysis.transfer import TransferConfig, run_transfer
    from l2bn.render import render_transfer

    name = None if optimizer is None else optimizer.value
    config = TransferConfig(
        lr, weight_decay, to_weight_decay, to_lr, name, storage, study, from_json
    )
    to_stdout = json_path is not None and str(json_path) == "-"
    if json_path is not None and not to_stdout:
        check_writable(json_path)
    result = run_transfer(config)
    for warning in result.warnings:
        err_console.print(f"l2bn: warning: {warning}", style="yellow", highlight=False,
                          soft_wrap=True)  # fmt: skip
    if to_stdout:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
        return
    console.print(render_transfer(result))
    if json_path is not None:
        write_json(json_path, result.to_dict())
        console.print(f"written to {json_path}")


# --- entry point ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        # Without standalone mode a `raise typer.Exit(n)` comes back as the return value.
        code = app(args=args, prog_name="l2bn", standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except L2bnError as e:
        _fail(str(e), 2, debug)
    except typer.TyperException as e:  # a usage error: unknown option, bad enum value, …
        _fail(e.format_message().replace("\n", " "), 2, debug)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("l2bn: interrupted", style="red", highlight=False)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:
        _fail(
            f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)", 1, debug
        )


def _fail(message: str, code: int, debug: bool) -> None:
    storage = sys.modules.get("l2bn.sweep.storage")  # loaded: some storage URL was parsed
    if storage is not None:
        message = storage.scrub(message)  # never print its password
    if debug:
        err_console.print_exception()
    # One line, never wrapped by the terminal width.
    err_console.print(f"l2bn: error: {message}", style="red", highlight=False, soft_wrap=True)
    sys.exit(code)

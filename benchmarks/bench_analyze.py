"""How long ``l2bn analyze`` takes on a large storage, against plain Optuna loading.

Builds N planted trials (default 10 000: 5 optimizer studies × 25 η × 8 λ × 10 seeds, each
with a 20-epoch, 5-layer history, as ``l2bn sweep`` writes them) in a temporary SQLite file
with plain Optuna (``add_trials``), then times, in the same process:

* baseline: ``optuna.load_study(...).trials_dataframe()`` for every study (pandas needed;
  without pandas, ``study.get_trials()`` with deep copies, Optuna's default);
* ``load_studies(bulk_sql=False)``: analyze's reader through Optuna's API (one
  ``get_trials(deepcopy=False)`` per study), as analyze read before the bulk SQL reader;
* ``analyze``: load (one SQL query per table, :mod:`l2bn.analysis.reading.studies`) + every fit.

Each line gives wall-clock seconds and the process's CPU seconds: on a shared machine the
wall clock also counts the time other processes held the cores, the CPU time does not.

Usage: ``python benchmarks/bench_analyze.py [--db PATH] [--seeds 10]`` (``--db`` keeps the
file and reuses it when it exists: writing 10 000 trials to SQLite takes minutes).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from l2bn.analysis.pipeline import AnalyzeConfig, analyze, analyze_group, group_studies
from l2bn.analysis.reading.studies import load_studies

OPTIMIZERS = {"sgd": 1.0, "nesterov": 1.0, "adam": 0.5, "rmsprop": 0.5, "adamw": 1.0}
LAYERS = ("conv1", "conv2", "conv3", "conv4", "fc")
EPOCHS = 20
STEPS = 390


def build(url: str, n_lr: int, n_wd: int, seeds: int) -> int:
    storage = optuna.storages.RDBStorage(url)
    rng = np.random.default_rng(0)
    dists = {
        "lr": optuna.distributions.FloatDistribution(1e-8, 1e6, log=True),
        "weight_decay": optuna.distributions.FloatDistribution(1e-8, 10.0, log=True),
        "seed": optuna.distributions.IntDistribution(0, 1000),
    }
    wds = np.geomspace(1e-5, 1e-2, n_wd)
    total = 0
    for opt, k in OPTIMIZERS.items():
        study = optuna.create_study(storage=storage, study_name=f"bench/{opt}")
        for key, v in {
            "optimizer": opt,
            "norm": "bn",
            "dataset": "cifar10",
            "epochs": EPOCHS,
        }.items():
            study.set_user_attr(key, v)
        trials = []
        for wd in wds:
            centre = math.exp(-7.0) * wd**-k
            for lr in np.geomspace(centre / 30, centre * 30, n_lr):
                for seed in range(seeds):
                    x = math.log(lr) + k * math.log(wd)
                    value = (
                        0.9 - 0.8 * math.exp(-((x + 7.0) ** 2) / 2) + 0.01 * rng.standard_normal()
                    )
                    a = 0.25 if k == 1.0 else 1 / 3
                    history: list[dict[str, Any]] = []
                    for e in range(1, EPOCHS + 1):
                        eta = lr * 0.1 ** ((e > EPOCHS // 2) + (e > 4 * EPOCHS // 5))
                        norm = (lr / wd) ** a * (e / EPOCHS) ** 0.1
                        layers = {
                            n: {"norm": norm * (i + 1), "unit_norm": norm, "eff_lr": eta / norm**2}
                            for i, n in enumerate(LAYERS)
                        }
                        history.append(
                            {"epoch": e, "lr": eta, "train_loss": 0.5, "train_error": 0.2,
                             "val_error": value, "seconds": 1.0, "layers": layers}
                        )  # fmt: skip
                    trials.append(
                        optuna.trial.create_trial(
                            params={"lr": float(lr), "weight_decay": float(wd), "seed": seed},
                            distributions=dists,
                            value=value,
                            user_attrs={
                                "test_error": value,
                                "train_loss": 0.5,
                                "diverged": False,
                                "steps_per_epoch": STEPS,
                                "history": history,
                            },
                        )
                    )
        study.add_trials(trials)
        total += len(trials)
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", type=Path, default=None, help="keep/reuse this SQLite file")
    p.add_argument("--lrs", type=int, default=25)
    p.add_argument("--wds", type=int, default=8)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "bench.db"
        url = f"sqlite:///{db}"
        if not db.exists():
            t0 = time.perf_counter()
            n = build(url, args.lrs, args.wds, args.seeds)
            print(f"wrote {n} trials in {time.perf_counter() - t0:.1f} s")
        names = [s.study_name for s in optuna.get_all_study_summaries(url, False)]

        try:
            import pandas  # noqa: F401

            def baseline() -> None:
                for name in names:
                    optuna.load_study(study_name=name, storage=url).trials_dataframe()

            base_label = "optuna load_study + trials_dataframe"
        except ImportError:

            def baseline() -> None:
                for name in names:
                    optuna.load_study(study_name=name, storage=url).get_trials()

            base_label = "optuna load_study + get_trials (pandas missing: no trials_dataframe)"

        cfg = AnalyzeConfig(storage=url)
        times: dict[str, list[tuple[float, float]]] = {}

        def timed(name: str, fn: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            times.setdefault(name, []).append((time.perf_counter() - t0, time.process_time() - c0))
            return out

        n = 0
        # Interleaved repeats, best of each: the machine is shared and the page cache warms.
        for _ in range(args.repeats):
            timed("baseline", baseline)
            timed("api", lambda: load_studies(url, bulk_sql=False))
            studies, _ = timed("load", lambda: load_studies(url))
            n = sum(len(s.trials) for s in studies)

            def fit(studies: Any = studies) -> None:
                for g in group_studies(studies):
                    analyze_group(g, cfg)

            timed("fit", fit)
            timed("all", lambda: analyze(cfg))

        def best(name: str) -> tuple[float, float]:
            wall = min(w for w, _ in times[name])
            cpu = min(c for _, c in times[name])
            return wall, cpu

        def show(name: str) -> str:
            wall, cpu = best(name)
            return f"{wall:.2f} s (cpu {cpu:.2f} s)"

        print(f"trials: {n} in {len(names)} studies; best of {args.repeats}")
        print(f"baseline ({base_label}): {show('baseline')}")
        print(f"analyze's reader through Optuna's API (bulk_sql=False): {show('api')}")
        print(f"analyze load: {show('load')}, fit: {show('fit')}")
        print(f"analyze end to end: {show('all')}")
        print(
            f"ratio analyze / baseline: {best('all')[0] / best('baseline')[0]:.2f} wall, "
            f"{best('all')[1] / best('baseline')[1]:.2f} cpu"
        )
        print(
            f"ratio load / API reader: {best('load')[0] / best('api')[0]:.2f} wall, "
            f"{best('load')[1] / best('api')[1]:.2f} cpu"
        )


if __name__ == "__main__":
    main()

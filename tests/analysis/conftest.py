"""The planted storage every analysis test module reads (built once per session)."""

from __future__ import annotations

import math

import optuna
import pytest

from .planting import (
    NORM_LRS,
    NORM_WDS,
    centred_grid,
    fast_sqlite,
    log_grid,
    norms_law,
    plant_study,
    surface,
)


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite storage holding every planted study (SQLite costs ~20 ms per trial)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('analyze') / 'planted.db'}"
    storage = fast_sqlite(url)  # one engine for every study: the schema is set up once
    wds = [1e-4, 1e-3, 1e-2]
    plant_study(storage, "p/sgd", "sgd", centred_grid(1.0), wds, surface(1.0))
    plant_study(storage, "p/adam", "adam", centred_grid(0.5), wds, surface(0.5), rng_seed=1)
    # normalized SGD: the error depends on η only.
    plant_study(
        storage, "p/normalized-sgd", "normalized-sgd", log_grid(1e-5, 1e-1, 7), wds,
        surface(0.0, math.log(1e-3)), rng_seed=2,
    )  # fmt: skip
    # One seed: the regression's t-interval instead of the bootstrap.
    plant_study(
        storage, "one/momentum", "momentum", centred_grid(1.0, n=9),
        [1e-4, 1e-3, 1e-2, 1e-1], surface(1.0), seeds=1, noise=0.002, rng_seed=3,
    )  # fmt: skip
    # A fixed η grid: at λ = 0.1, η* = 1e-4 lies below the lowest η, an edge minimum.
    plant_study(
        storage, "edge/nesterov", "nesterov", log_grid(1e-3, 10.0, 9),
        [1e-4, 3e-4, 1e-3, 1e-1], surface(1.0, math.log(1e-5)), seeds=1, noise=0.002,
        rng_seed=4,
    )  # fmt: skip
    plant_study(storage, "single/sgd", "sgd", log_grid(1e-3, 1.0, 5), [1e-3], surface(1.0))
    # Norm studies: η·λ·T spans 0.05 … 500, so the equilibrium filter has work to do.
    plant_study(
        storage, "n/sgd", "sgd", NORM_LRS, NORM_WDS, surface(1.0, -4.0), seeds=1,
        norms=norms_law(0.25), rng_seed=5,
    )  # fmt: skip
    plant_study(
        storage, "n/rmsprop", "rmsprop", NORM_LRS, NORM_WDS, surface(0.5, -3.0), seeds=1,
        norms=norms_law(1 / 3), rng_seed=6,
    )  # fmt: skip
    optuna.create_study(storage=storage, study_name="not-l2bn")  # no 'optimizer' attr
    return url

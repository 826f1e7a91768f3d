"""Shared fixtures. The real CIFAR-10 subset lives in ../shared/data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_CIFAR = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # Tests run on 2-core CI machines; more threads than cores only thrash.
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def cifar_dir() -> Path:
    """The shared real CIFAR-10 subset (5170 train / 1017 test); skip when it is absent."""
    folder = Path(os.environ.get("L2BN_TEST_DATA", SHARED_CIFAR))
    if not (folder / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(f"real CIFAR-10 subset not found under {folder}")
    return folder

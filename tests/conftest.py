"""Shared fixtures. The real CIFAR-10 subset lives in ../shared/data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_CIFAR = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip themselves where torch sees no CUDA device (scripts/gpu_check.sh
    runs exactly those on a GPU node: ``-m gpu``)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: no GPU visible to torch")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


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

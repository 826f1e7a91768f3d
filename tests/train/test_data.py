"""Reading CIFAR-10 safely, the validation split, and augmentation on the device."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from l2bn.errors import DataError
from l2bn.train import data as D


def _write_batch(path: Path, data: object, labels: object) -> Path:
    path.write_bytes(pickle.dumps({"batch_label": "x", "data": data, "labels": labels}, protocol=2))
    return path


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": _Evil(marker), "labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="refused to load global"):
        D.read_batch(path)
    assert not marker.exists()
    # The unrestricted unpickler would have run it: the test's payload is real.
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_reads_the_shared_real_subset(cifar_dir: Path) -> None:
    x_train, y_train, x_test, y_test = D.load_cifar10(cifar_dir)
    assert x_train.shape == (5170, 3, 32, 32) and x_train.dtype == np.uint8
    assert x_test.shape == (1017, 3, 32, 32)
    assert y_train.shape == (5170,) and set(np.unique(y_train)) == set(range(10))
    # Every class is present at roughly a tenth.
    assert np.bincount(y_test, minlength=10).min() > 60


def test_truncated_file_is_a_one_line_error(tmp_path: Path, cifar_dir: Path) -> None:
    src = D.find_cifar10(cifar_dir) / "data_batch_2"
    bad = tmp_path / "data_batch_2"
    bad.write_bytes(src.read_bytes()[:100_000])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        D.read_batch(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "labels", "message"),
    [
        (np.zeros((2, 100), np.uint8), [0, 1], "3072"),
        (np.zeros((2, 3072), np.float32), [0, 1], "uint8"),
        (np.zeros((2, 3072), np.uint8), [0], "2 images"),
        (np.zeros((2, 3072), np.uint8), [0, 10], "labels must be integers"),
        (np.zeros((2, 3072), np.uint8), [0, -1], "labels must be integers"),
    ],
)
def test_bad_contents_are_named(tmp_path: Path, data: object, labels: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        D.read_batch(_write_batch(tmp_path / "b", data, labels))


def test_missing_folder_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"--data-dir.*L2BN_DATA.*--download"):
        D.load_cifar10(tmp_path)


def test_split_is_fixed_disjoint_and_complete() -> None:
    train, val = D.split_train_val(1000, 0.1)
    assert len(val) == 100 and len(train) == 900
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(1000))
    _, val2 = D.split_train_val(1000, 0.1)
    np.testing.assert_array_equal(val, val2)  # the same for every run


def test_augment_translates_and_flips_each_image() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8)  # no zeros: padding shows
    out = D.augment(x, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    seen_flip, seen_shift = False, False
    for i in range(len(x)):
        matches = [
            (dy, dx, flip)
            for flip in (False, True)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(
                out[i],
                (padded[i].flip(2) if flip else padded[i])[:, dy : dy + 32, dx : dx + 32],
            )
        ]
        assert matches, f"image {i} is not a translated (flipped) copy of its input"
        seen_flip |= any(m[2] for m in matches)
        seen_shift |= any((m[0], m[1]) != (4, 4) for m in matches)
    assert seen_flip and seen_shift


def test_synthetic_is_seeded() -> None:
    a, b = D.make_synthetic(64, 16, seed=3), D.make_synthetic(64, 16, seed=3)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], D.make_synthetic(64, 16, seed=4)[0])

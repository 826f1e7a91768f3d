"""Data sets held whole on the training device, as uint8, with augmentation on the device.

Why not a DataLoader: CIFAR-10 is 150 MB as uint8, so it fits on any device; gathering a batch
by index and augmenting it with a few tensor ops avoids worker processes, host-to-device copies
and per-sample Python work (airbench's systems trick, without its recipe changes).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from l2bn.errors import DataError

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)

# Per-channel statistics of the CIFAR-10 training set, in [0, 1] units.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

SPLIT_SEED = 0  # the validation split is the same for every run, whatever its --seed


# --- reading the official python batches, safely --------------------------------------------

# A pickle can run arbitrary code when it is loaded. The CIFAR-10 batches need exactly these
# globals to rebuild their numpy arrays (plus _codecs.encode, which Python 3 writes for bytes in
# protocol 2 and which only turns a str into bytes); anything else is refused.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class RefusedGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise RefusedGlobal(f"refused to load global {module}.{name}")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One python-batches file → (images uint8 N×3×32×32, labels int64 N)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except RefusedGlobal as e:
        raise DataError(
            f"{path} is not a CIFAR-10 batch ({e}); replace it with the official file"
        ) from e
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
    ) as e:
        raise DataError(
            f"{path} is truncated or corrupt ({type(e).__name__}); re-download the data set"
        ) from e
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} lacks the 'data' and 'labels' entries of a CIFAR-10 batch")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' must be a uint8 N×3072 array")
    if data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' rows have {data.shape[1]} values, expected 3072")
    if not isinstance(labels, list | np.ndarray) or len(labels) != data.shape[0]:
        raise DataError(f"{path}: {len(labels)} labels for {data.shape[0]} images")
    y = np.asarray(labels)
    if y.size and (y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels must be integers in 0..{NUM_CLASSES - 1}")
    return data.reshape(-1, *IMAGE_SHAPE), y.astype(np.int64)


def find_cifar10(root: Path) -> Path:
    """The python-batches folder: ``root`` itself or ``root/cifar-10-batches-py``."""
    for candidate in (root, root / CIFAR10_FOLDER):
        if (candidate / TEST_FILE).is_file():
            return candidate
    raise DataError(
        f"no CIFAR-10 found in {root} (expected {CIFAR10_FOLDER}/ with data_batch_1..5 and "
        f"test_batch); pass --data-dir, set L2BN_DATA, or add --download"
    )


def load_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from the python batches."""
    folder = find_cifar10(root)
    missing = [f for f in TRAIN_FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}; the folder is incomplete")
    parts = [read_batch(folder / f) for f in TRAIN_FILES]
    x_test, y_test = read_batch(folder / TEST_FILE)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return x_train, y_train, x_test, y_test


def download_cifar10(root: Path) -> Path:
    """Fetch and unpack the official archive into ``root``, checking its md5.

    Uses torchvision when it imports (it is an optional extra), otherwise the standard library.
    """
    root.mkdir(parents=True, exist_ok=True)
    try:
        from torchvision.datasets.utils import (  # type: ignore[import-not-found,unused-ignore]
            download_and_extract_archive,
        )
    except Exception:  # torchvision missing, or a CUDA build that fails beside CPU torch
        _download_stdlib(root)
    else:
        download_and_extract_archive(CIFAR10_URL, str(root), md5=CIFAR10_MD5)
    return find_cifar10(root)


def _download_stdlib(root: Path) -> None:
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        try:
            with urllib.request.urlopen(CIFAR10_URL, timeout=60) as r, archive.open("wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise DataError(f"download of {CIFAR10_URL} failed: {e}") from e
        md5 = hashlib.md5(archive.read_bytes()).hexdigest()
        if md5 != CIFAR10_MD5:
            raise DataError(f"downloaded archive has md5 {md5}, expected {CIFAR10_MD5}")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        # Move into place only once complete, so an interrupted download leaves nothing.
        shutil.move(str(Path(tmp) / CIFAR10_FOLDER), str(root / CIFAR10_FOLDER))


# --- synthetic images ---------------------------------------------------------------------


def make_synthetic(
    n_train: int = 2048, n_test: int = 512, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 10-class image task a BN net learns in one epoch: smooth class templates + noise."""
    rng = np.random.default_rng(seed)
    # Low-frequency templates (8×8 upsampled to 32×32) so that convs and pooling find them.
    coarse = rng.normal(size=(NUM_CLASSES, 3, 8, 8))
    templates = coarse.repeat(4, axis=2).repeat(4, axis=3)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, NUM_CLASSES, size=n)
        x = templates[y] + 1.5 * rng.normal(size=(n, *IMAGE_SHAPE))
        return np.clip(128 + 40 * x, 0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = sample(n_train)
    x_test, y_test = sample(n_test)
    return x_train, y_train, x_test, y_test


# --- on the device ------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # uint8, N×3×32×32, on the training device
    y: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class ImageData:
    train: Split
    val: Split
    test: Split
    mean: torch.Tensor  # 1×3×1×1, in uint8 units
    std: torch.Tensor


def split_train_val(n: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of (train, val): a fixed permutation, independent of the run's seed."""
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise DataError(f"val-fraction {val_fraction} leaves no training images out of {n}")
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def to_device(
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    val_fraction: float,
    device: torch.device,
) -> ImageData:
    x_train, y_train, x_test, y_test = arrays
    tr, va = split_train_val(len(y_train), val_fraction)

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(
            torch.from_numpy(np.ascontiguousarray(x)).to(device),
            torch.from_numpy(y).to(device),
        )

    mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1) * 255
    return ImageData(
        split(x_train[tr], y_train[tr]),
        split(x_train[va], y_train[va]),
        split(x_test, y_test),
        mean,
        std,
    )


@cache
def load_image_data(
    dataset: str, data_dir: Path | None, val_fraction: float, device: str, download: bool = False
) -> ImageData:
    """Load once per process (a sweep worker trains many runs on the same data)."""
    if dataset == "synthetic":
        arrays = make_synthetic()
    else:
        assert data_dir is not None
        if download:
            ensure_cifar10(data_dir)
        arrays = load_cifar10(data_dir)
    return to_device(arrays, val_fraction, torch.device(device))


def ensure_cifar10(root: Path) -> Path:
    """The CIFAR-10 folder under ``root``, downloaded first if it is not there."""
    try:
        return find_cifar10(root)
    except DataError:
        return download_cifar10(root)


def epoch_images(
    split: Split, generator: torch.Generator, n: int, augment_: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's data: the first ``n`` images of a fresh permutation, augmented, as uint8.

    Once per epoch rather than per batch (airbench): a few dozen kernels per epoch instead of a
    dozen per step, which matters on a GPU, and it lets l2bn.train.tasks slice K models' batches
    out of K such tensors without any per-step gather. Each model draws from its own run's
    generator through this one function, so model k of K sees exactly the batches of a run of
    its own. With augmentation the permuted images are gathered chunk by chunk inside
    :func:`augment`: the epoch's un-augmented copy is never made.
    """
    perm = torch.randperm(len(split), device=split.y.device, generator=generator)[:n]
    x = augment(split.x, generator, index=perm) if augment_ else split.x[perm]
    return x, split.y[perm]


# Images augmented per pass of :func:`augment`: bounds its temporaries (a chunk's copy, its
# padded copy and its row-gathered copy: 11.7 kB an image at 32×32, 24 MB) whatever the epoch's
# size, while an epoch of 50 000 images still takes only 25 passes of a few kernels each.
AUGMENT_CHUNK = 2048


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    pad: int = 4,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random translation by up to ``pad`` px (zero padding) and horizontal flip, per image.

    Augments ``x``, or ``x[index]`` when ``index`` is given, without making that copy first.
    Three draws of n values each (row offsets, column offsets, flips, in that order), then pure
    copies of pixels: the result depends on the generator's state only, not on the chunking.

    Memory: the index state is O(n), one row and one column offset per image, and the pixels
    move in chunks of :data:`AUGMENT_CHUNK` images (:func:`_shift_and_flip`), so nothing
    epoch-sized is made but the output. One advanced-indexing expression over the padded epoch
    would be shorter, but CUDA materializes its four broadcast index tensors, n·3·32·32 int64
    each: 4.4 GB for the 45 000 training images of a CIFAR-10 run.
    """
    n = len(x) if index is None else len(index)
    dev = x.device
    dy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    flip = torch.rand(n, device=dev, generator=generator) < 0.5
    out = torch.empty((n, *x.shape[1:]), dtype=x.dtype, device=dev)
    for start in range(0, n, AUGMENT_CHUNK):
        part = slice(start, start + AUGMENT_CHUNK)
        images = x[part] if index is None else x[index[part]]  # a view, or a chunk's copy
        _shift_and_flip(images, dy[part], dx[part], flip[part], pad, out[part])
    return out


def _shift_and_flip(
    x: torch.Tensor,
    dy: torch.Tensor,
    dx: torch.Tensor,
    flip: torch.Tensor,
    pad: int,
    out: torch.Tensor,
) -> None:
    """``out[i] = padded(x[i])[:, dy[i] : dy[i] + h, dx[i] : dx[i] + w]``, flipped left to right
    where ``flip[i]``: two gathers, rows then columns. Each index is a stride-0 ``expand`` of an
    m×1×h×1 (rows) or m×1×1×w (columns) tensor, which gather reads through its strides, without
    a copy (tests/train/test_data.py bounds the peak memory on CPU and on CUDA)."""
    m, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # m×c×(h+2p)×(w+2p)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # m×h
    cols = torch.arange(w, device=x.device).expand(m, w)
    # A flip is a reversed column index, folded into the same gather.
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]  # m×w
    tall = padded.gather(2, rows[:, None, :, None].expand(m, c, h, w + 2 * pad))
    torch.gather(tall, 3, cols[:, None, None, :].expand(m, c, h, w), out=out)


def normalize(x: torch.Tensor, data: ImageData, dtype: torch.dtype) -> torch.Tensor:
    return ((x.to(dtype) - data.mean.to(dtype)) / data.std.to(dtype)).contiguous()

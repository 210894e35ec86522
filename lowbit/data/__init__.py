"""Fashion-MNIST for the course: the embedded subset, the full set when present, loaders, calibration data.

Every function returns normalized float32 images ``[N, 1, 28, 28]`` (``(x / 255 - MEAN) / STD``) and int64
labels ``[N]`` in ``0..9`` (names in ``CLASSES``).

Sources:

- ``"embedded"``: 6,000 train / 3,000 test images (stratified, 600 / 300 per class) shipped inside this
  package (``fashion_mnist_subset.npz``, cut by ``python -m lowbit.data.make_subset``). Always available.
- ``"full"``: the 60,000 / 10,000 official images, found in this order: the ``root=`` argument,
  ``$LOWBIT_DATA``, ``/usr/share/datasets/fashion-mnist/`` (Debian package ``dataset-fashion-mnist``), and
  finally a torchvision download, only when ``download=True``.
- ``"auto"``: ``"full"`` when it is found on disk, else ``"embedded"``.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from lowbit.data.make_subset import DEBIAN_DIR, FILES, SUBSET_NAME, read_idx

__all__ = ["CLASSES", "MEAN", "STD", "SPLITS", "SOURCES", "load_fashion_mnist", "loaders",
           "calibration_batch", "find_full_dataset", "SUBSET_PATH"]

CLASSES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: Mean and standard deviation of the full Fashion-MNIST training pixels scaled to [0, 1].
MEAN: float = 0.2860
STD: float = 0.3530
SPLITS = ("train", "test")
SOURCES = ("embedded", "full", "auto")
SUBSET_PATH = Path(__file__).resolve().parent / SUBSET_NAME
#: Where the full set is usually installed; a module constant so tests can point it elsewhere.
DEBIAN_DATA_DIR = DEBIAN_DIR
ENV_VAR = "LOWBIT_DATA"


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")


def _normalize(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28], ``(x / 255 - MEAN) / STD``."""
    scaled = images_uint8.astype(np.float32)[:, None] / np.float32(255.0)
    return (scaled - np.float32(MEAN)) / np.float32(STD)


def _freeze(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=None)
def _embedded_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalized float32 images and int64 labels of the embedded split (read-only, cached)."""
    with np.load(SUBSET_PATH) as archive:
        images, labels = archive[f"{split}_images"], archive[f"{split}_labels"]
    return _freeze(_normalize(images), labels.astype(np.int64))


@functools.lru_cache(maxsize=None)
def _full_arrays(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalized float32 images and int64 labels of a full split read from ``directory`` (cached)."""
    image_file, label_file = (Path(directory) / name for name in FILES[split])
    return _freeze(_normalize(read_idx(image_file)), read_idx(label_file).astype(np.int64))


def _holds_full_dataset(directory: Path) -> bool:
    return all((directory / name).is_file() for pair in FILES.values() for name in pair)


def _candidate_dirs(root: str | os.PathLike | None) -> list[Path]:
    """Folders to search, in resolution order; each also checked for torchvision's ``FashionMNIST/raw``."""
    bases = [Path(root)] if root is not None else []
    if os.environ.get(ENV_VAR):
        bases.append(Path(os.environ[ENV_VAR]))
    bases.append(Path(DEBIAN_DATA_DIR))
    return [folder for base in bases for folder in (base, base / "FashionMNIST" / "raw")]


def find_full_dataset(root: str | os.PathLike | None = None) -> Path | None:
    """Folder holding the four official ``*-ubyte.gz`` files, or ``None`` (``root``, ``$LOWBIT_DATA``, Debian)."""
    return next((folder for folder in _candidate_dirs(root) if _holds_full_dataset(folder)), None)


def _download_full_dataset(root: str | os.PathLike | None) -> Path:
    """Download with torchvision into ``root`` (or ``$LOWBIT_DATA``, or ``~/.cache/lowbit``)."""
    from torchvision.datasets import FashionMNIST

    target = Path(root or os.environ.get(ENV_VAR) or Path.home() / ".cache" / "lowbit")
    for train in (True, False):
        FashionMNIST(str(target), train=train, download=True)
    return target / "FashionMNIST" / "raw"


def _missing_full_dataset_error() -> FileNotFoundError:
    return FileNotFoundError(
        "The full Fashion-MNIST dataset was not found (searched root=, $LOWBIT_DATA and "
        f"{DEBIAN_DATA_DIR}). Get it one of three ways: (1) pass root=<folder> or set LOWBIT_DATA=<folder> "
        "pointing at the four *-ubyte.gz files; (2) `apt-get install dataset-fashion-mnist`; "
        "(3) call with download=True to fetch it with torchvision. Or use source='embedded'."
    )


def load_fashion_mnist(split: str = "train", source: str = "embedded", root: str | os.PathLike | None = None,
                       download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 ``[N, 1, 28, 28]`` (normalized with ``MEAN``/``STD``) and labels int64 ``[N]``.

    ``split`` is ``"train"`` or ``"test"``; ``source`` is ``"embedded"``, ``"full"`` or ``"auto"`` (see the
    module docstring). Decoded arrays are cached; every call returns fresh tensors the caller may modify.
    """
    _check_choice("split", split, SPLITS)
    _check_choice("source", source, SOURCES)
    if source == "embedded":
        images, labels = _embedded_arrays(split)
    else:
        folder = find_full_dataset(root)
        if folder is None and download:
            folder = _download_full_dataset(root)
        if folder is None and source == "full":
            raise _missing_full_dataset_error()
        images, labels = _full_arrays(str(folder), split) if folder is not None else _embedded_arrays(split)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


def loaders(batch_size: int = 128, source: str = "embedded", seed: int = 0, num_workers: int = 0,
            root: str | os.PathLike | None = None, download: bool = False,
            test_batch_size: int | None = None) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, test_loader)`` over ``load_fashion_mnist``; batches are ``(images, labels)``.

    The train loader shuffles with a generator seeded by ``seed`` (same seed, same order every epoch
    sequence); the test loader keeps the stored order. ``test_batch_size`` defaults to ``batch_size``.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    train_set = TensorDataset(*load_fashion_mnist("train", source, root, download))
    test_set = TensorDataset(*load_fashion_mnist("test", source, root, download))
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator,
                              num_workers=num_workers)
    test_loader = DataLoader(test_set, batch_size=test_batch_size or batch_size, shuffle=False,
                             num_workers=num_workers)
    return train_loader, test_loader


@functools.lru_cache(maxsize=32)
def _calibration_indices(n: int, seed: int) -> np.ndarray:
    """Stratified indices into the embedded train split: ``n // 10`` per class, the remainder spread one
    extra image over ``n % 10`` seeded classes. Sorted by class then random order within the class."""
    _, labels = _embedded_arrays("train")
    rng = np.random.default_rng(seed)
    counts = np.full(len(CLASSES), n // len(CLASSES))
    counts[rng.choice(len(CLASSES), size=n % len(CLASSES), replace=False)] += 1
    picks = [rng.choice(np.flatnonzero(labels == cls), size=int(count), replace=False)
             for cls, count in enumerate(counts)]
    indices = np.concatenate(picks)
    indices.setflags(write=False)
    return indices


def calibration_batch(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, class-balanced calibration set from the embedded TRAIN split.

    Returns images float32 ``[n, 1, 28, 28]`` and labels int64 ``[n]``. Every class gets ``n // 10`` images
    (when ``n`` is a multiple of 10 the set is exactly balanced; otherwise ``n % 10`` classes chosen by
    ``seed`` get one more). Same ``(n, seed)`` → the same images, always.
    """
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    images, labels = _embedded_arrays("train")
    per_class_available = int(np.bincount(labels, minlength=len(CLASSES)).min())
    available = per_class_available * len(CLASSES)
    if not 0 < n <= available:
        raise ValueError(f"n must be between 1 and {available} (the embedded train split holds "
                         f"{per_class_available} images per class); got {n}")
    indices = _calibration_indices(n, seed)
    return torch.from_numpy(images[indices]), torch.from_numpy(labels[indices])

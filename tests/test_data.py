"""lowbit.data and lowbit.data.make_subset: the embedded subset, full-set resolution, loaders, calibration."""
from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit import data
from lowbit.data import make_subset

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_debian = pytest.mark.skipif(not (DEBIAN / "train-labels-idx1-ubyte.gz").is_file(),
                                  reason="Debian dataset-fashion-mnist not installed")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (magic 0x0000 08 ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_fake_full_dataset(folder: Path, n: int = 20, fill: int = 0) -> None:
    """Four tiny IDX files with the official names; every image is ``fill``, labels cycle 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, (image_name, label_name) in make_subset.FILES.items():
        write_idx(folder / image_name, np.full((n, 28, 28), fill, dtype=np.uint8))
        write_idx(folder / label_name, np.arange(n) % 10)


@pytest.fixture
def no_full_dataset(tmp_path, monkeypatch):
    """Every place the full set could be found points at an empty folder."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("LOWBIT_DATA", str(empty))
    monkeypatch.setattr(data, "DEBIAN_DATA_DIR", empty)
    return empty


# ---------------------------------------------------------------- embedded subset
@pytest.mark.parametrize("split, count", [("train", 6000), ("test", 3000)])
def test_embedded_shapes_dtypes_and_balance(split, count):
    images, labels = data.load_fashion_mnist(split)
    assert images.shape == (count, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (count,) and labels.dtype == torch.int64
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), count // 10))


def test_embedded_normalization_statistics():
    """The subset is a random stratified cut, so the full-set MEAN/STD normalize it to ≈ N(0, 1): ± 0.02."""
    images, _ = data.load_fashion_mnist("train")
    assert abs(images.mean().item()) < 0.02
    assert abs(images.std().item() - 1.0) < 0.02
    background = (0.0 - data.MEAN) / data.STD
    assert images.min().item() == pytest.approx(background, abs=1e-6)
    assert images.max().item() == pytest.approx((1.0 - data.MEAN) / data.STD, abs=1e-6)


def test_constants():
    assert len(data.CLASSES) == 10 and len(set(data.CLASSES)) == 10
    assert (data.MEAN, data.STD) == (0.2860, 0.3530)


def test_returned_tensors_are_fresh_copies():
    images, labels = data.load_fashion_mnist("test")
    original_first = images[0].clone()
    images.zero_()
    labels.fill_(7)
    again_images, again_labels = data.load_fashion_mnist("test")
    assert torch.equal(again_images[0], original_first)
    assert torch.bincount(again_labels, minlength=10).tolist() == [300] * 10


def test_subset_file_size_and_license():
    assert data.SUBSET_PATH.stat().st_size <= 5 * 1024 * 1024
    license_text = (data.SUBSET_PATH.parent / "LICENSE-fashion-mnist.txt").read_text()
    assert "Zalando SE" in license_text and "MIT" in license_text


@needs_debian
def test_embedded_subset_matches_the_recorded_original_indices():
    with np.load(data.SUBSET_PATH) as archive:
        test_images, test_indices = archive["test_images"], archive["test_indices"]
    full_images = make_subset.read_idx(DEBIAN / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(full_images[test_indices], test_images)


# ---------------------------------------------------------------- argument checking
@pytest.mark.parametrize("kwargs, word", [({"split": "val"}, "'train', 'test'"),
                                          ({"source": "web"}, "'embedded', 'full', 'auto'")])
def test_bad_split_or_source_names_allowed_values(kwargs, word):
    with pytest.raises(ValueError, match=word):
        data.load_fashion_mnist(**kwargs)


# ---------------------------------------------------------------- full set resolution
def test_missing_full_dataset_error_names_every_remedy(no_full_dataset):
    with pytest.raises(FileNotFoundError) as error:
        data.load_fashion_mnist("test", source="full", root=no_full_dataset)
    message = str(error.value)
    assert "LOWBIT_DATA" in message and "root=" in message
    assert "apt-get install dataset-fashion-mnist" in message and "download=True" in message


def test_auto_falls_back_to_embedded(no_full_dataset):
    images, labels = data.load_fashion_mnist("test", source="auto")
    embedded_images, embedded_labels = data.load_fashion_mnist("test", source="embedded")
    assert torch.equal(images, embedded_images) and torch.equal(labels, embedded_labels)


def test_full_from_root_argument(tmp_path, no_full_dataset):
    write_fake_full_dataset(tmp_path / "mine", n=20, fill=255)
    images, labels = data.load_fashion_mnist("train", source="full", root=tmp_path / "mine")
    assert images.shape == (20, 1, 28, 28) and labels.tolist() == [i % 10 for i in range(20)]
    assert torch.allclose(images, torch.full_like(images, (1.0 - data.MEAN) / data.STD))


def test_root_wins_over_env_and_env_wins_over_debian(tmp_path, monkeypatch):
    write_fake_full_dataset(tmp_path / "root", n=10, fill=0)
    write_fake_full_dataset(tmp_path / "env", n=30, fill=0)
    write_fake_full_dataset(tmp_path / "debian" / "FashionMNIST" / "raw", n=40, fill=0)  # torchvision layout
    monkeypatch.setenv("LOWBIT_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(data, "DEBIAN_DATA_DIR", tmp_path / "debian")
    assert len(data.load_fashion_mnist("test", "full", root=tmp_path / "root")[1]) == 10
    assert len(data.load_fashion_mnist("test", "full")[1]) == 30
    monkeypatch.delenv("LOWBIT_DATA")
    assert len(data.load_fashion_mnist("test", "auto")[1]) == 40


# ---------------------------------------------------------------- loaders
def _label_order(loader) -> torch.Tensor:
    return torch.cat([labels for _, labels in loader])


def test_loaders_seeded_shuffle_and_fixed_test_order():
    train_a, test_a = data.loaders(batch_size=500, seed=0)
    train_b, test_b = data.loaders(batch_size=500, seed=0)
    train_c, _ = data.loaders(batch_size=500, seed=1)
    first_a = next(iter(train_a))[0]
    assert torch.equal(first_a, next(iter(train_b))[0])
    assert not torch.equal(first_a, next(iter(train_c))[0])
    stored_order = data.load_fashion_mnist("train")[1]
    assert not torch.equal(_label_order(train_a), stored_order)
    assert torch.equal(_label_order(test_a), data.load_fashion_mnist("test")[1])
    assert torch.equal(_label_order(test_a), _label_order(test_b))
    assert len(train_a.dataset) == 6000 and len(test_a.dataset) == 3000


def test_loaders_reject_bad_batch_size_and_seed():
    with pytest.raises(ValueError, match="batch_size"):
        data.loaders(batch_size=0)
    with pytest.raises(TypeError, match="seed"):
        data.loaders(seed="0")


# ---------------------------------------------------------------- calibration batch
def test_calibration_batch_is_balanced_fixed_and_from_train():
    images, labels = data.calibration_batch(250, seed=0)
    assert images.shape == (250, 1, 28, 28) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == [25] * 10
    again_images, again_labels = data.calibration_batch(250, seed=0)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    other_images, _ = data.calibration_batch(250, seed=1)
    assert not torch.equal(images, other_images)
    train_images, train_labels = data.load_fashion_mnist("train")
    distances = torch.cdist(images.flatten(1), train_images.flatten(1),
                            compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distances.argmin(dim=1)
    assert torch.allclose(distances.min(dim=1).values, torch.zeros(250), atol=1e-4)
    assert torch.equal(train_labels[nearest], labels)
    assert len(set(nearest.tolist())) == 250  # no image twice


def test_calibration_batch_default_size_is_nearly_balanced():
    _, labels = data.calibration_batch()
    counts = torch.bincount(labels, minlength=10)
    assert counts.sum().item() == 256 and counts.max() - counts.min() == 1


def test_calibration_batch_is_not_corrupted_by_callers():
    images, _ = data.calibration_batch(100)
    reference = images.clone()
    images.add_(1.0)
    assert torch.equal(data.calibration_batch(100)[0], reference)


@pytest.mark.parametrize("n, error", [(0, ValueError), (-10, ValueError), (6010, ValueError),
                                      (2.5, TypeError), (True, TypeError)])
def test_calibration_batch_bad_sizes(n, error):
    with pytest.raises(error, match="n must be"):
        data.calibration_batch(n)


# ---------------------------------------------------------------- make_subset
def test_read_idx_roundtrip_and_bad_magic(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(make_subset.read_idx(tmp_path / "x.gz"), array)
    with gzip.open(tmp_path / "bad.gz", "wb") as handle:
        handle.write(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="magic"):
        make_subset.read_idx(tmp_path / "bad.gz")


def test_stratified_indices_are_balanced_seeded_and_unique():
    labels = np.repeat(np.arange(10), 50)
    np.random.default_rng(3).shuffle(labels)
    picked = make_subset.stratified_indices(labels, per_class=7, seed=0)
    assert len(set(picked.tolist())) == 70
    assert np.bincount(labels[picked], minlength=10).tolist() == [7] * 10
    np.testing.assert_array_equal(picked, make_subset.stratified_indices(labels, 7, seed=0))
    assert not np.array_equal(picked, make_subset.stratified_indices(labels, 7, seed=1))
    with pytest.raises(ValueError, match="class"):
        make_subset.stratified_indices(labels, per_class=51, seed=0)


@needs_debian
def test_make_subset_rejects_a_corrupted_file(tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    (source / "train-images-idx3-ubyte.gz").symlink_to(DEBIAN / "train-images-idx3-ubyte.gz")
    corrupted = source / "train-labels-idx1-ubyte.gz"
    shutil.copyfile(DEBIAN / "train-labels-idx1-ubyte.gz", corrupted)
    payload = bytearray(corrupted.read_bytes())
    payload[-1] ^= 0xFF
    corrupted.write_bytes(bytes(payload))
    with pytest.raises(make_subset.ChecksumError, match="SHA-256 mismatch"):
        make_subset.verify_checksum(corrupted)
    assert make_subset.main(["--src", str(source), "--out", str(tmp_path / "out")]) == 1
    assert "SHA-256 mismatch" in capsys.readouterr().err
    assert not (tmp_path / "out" / make_subset.SUBSET_NAME).exists()


@needs_debian
def test_known_digests_match_the_installed_files():
    for name in make_subset.SHA256:
        make_subset.verify_checksum(DEBIAN / name)


def test_download_only_when_asked(tmp_path, no_full_dataset, monkeypatch):
    """download=True hands over to torchvision (faked here: tests never touch the network)."""
    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_fake_full_dataset(Path(root) / "FashionMNIST" / "raw", n=10)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    target = tmp_path / "downloads"
    with pytest.raises(FileNotFoundError):
        data.load_fashion_mnist("test", "full", root=target)
    assert calls == []
    images, labels = data.load_fashion_mnist("test", "full", root=target, download=True)
    assert len(labels) == 10 and {c[0] for c in calls} == {str(target)} and all(c[2] for c in calls)


@needs_debian
@pytest.mark.parametrize("split, per_class, seed", [("train", 600, 0), ("test", 300, 1)])
def test_recutting_reproduces_the_shipped_selection(split, per_class, seed):
    labels = make_subset.read_idx(DEBIAN / make_subset.FILES[split][1])
    with np.load(data.SUBSET_PATH) as archive:
        shipped_indices, shipped_labels = archive[f"{split}_indices"], archive[f"{split}_labels"]
    np.testing.assert_array_equal(make_subset.stratified_indices(labels, per_class, seed), shipped_indices)
    np.testing.assert_array_equal(labels[shipped_indices], shipped_labels)

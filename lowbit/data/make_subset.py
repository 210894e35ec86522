"""Cut the embedded Fashion-MNIST subset shipped inside ``lowbit/data/``.

Run once by maintainers (the package never needs the full files at run time)::

    python -m lowbit.data.make_subset [--src /usr/share/datasets/fashion-mnist] [--out lowbit/data]

Reads the four IDX ``.gz`` files of the Debian package ``dataset-fashion-mnist``, checks their SHA-256
digests, and keeps a stratified, seeded selection: ``TRAIN_PER_CLASS`` images per class from the training
split and ``TEST_PER_CLASS`` per class from the test split. The result is saved with
``np.savez_compressed`` as ``fashion_mnist_subset.npz`` holding ``train_images`` (uint8 [N, 28, 28]),
``train_labels`` (uint8 [N]), ``test_images`` and ``test_labels``; the indices taken from the full splits are
stored too (``train_indices``, ``test_indices``, int32) so the cut is auditable.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBSET_NAME = "fashion_mnist_subset.npz"
OUT_DIR = Path(__file__).resolve().parent
NUM_CLASSES = 10
TRAIN_PER_CLASS = 600
TEST_PER_CLASS = 300
SEED = 0
MAX_BYTES = 5 * 1024 * 1024

#: SHA-256 of the official Fashion-MNIST files (identical to the Debian package's, zalandoresearch release).
SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}

#: File names per split: (images, labels).
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class ChecksumError(ValueError):
    """A source file's SHA-256 digest differs from the known Fashion-MNIST digest."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: Path) -> None:
    """Raise ``ChecksumError`` if ``path`` is not the genuine Fashion-MNIST file of that name."""
    expected = SHA256.get(path.name)
    if expected is None:
        raise ChecksumError(f"{path.name} is not a known Fashion-MNIST file; expected one of {sorted(SHA256)}")
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumError(
            f"SHA-256 mismatch for {path}:\n  expected {expected}\n  got      {actual}\n"
            "The file is corrupted or not the official Fashion-MNIST release. Reinstall it with "
            "`apt-get install --reinstall dataset-fashion-mnist` or point --src at a good copy."
        )


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file (ubyte data) into a uint8 array of the shape its header declares."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_end)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header declares shape {shape} but holds {data.size} bytes of data")
    return data.reshape(shape)


def load_split(src: Path, split: str, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels uint8 [N] of one full split read from ``src``."""
    image_file, label_file = (Path(src) / name for name in FILES[split])
    if verify:
        verify_checksum(image_file)
        verify_checksum(label_file)
    images, labels = read_idx(image_file), read_idx(label_file)
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def stratified_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices taking ``per_class`` random items of every class (seeded, without replacement)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in range(NUM_CLASSES):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            raise ValueError(f"class {cls} has only {len(members)} items, {per_class} requested")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int32)


def make_subset(src: Path = DEBIAN_DIR, out_dir: Path = OUT_DIR, train_per_class: int = TRAIN_PER_CLASS,
                test_per_class: int = TEST_PER_CLASS, seed: int = SEED) -> Path:
    """Verify, parse and cut the subset; write ``out_dir/fashion_mnist_subset.npz`` and return its path."""
    arrays = {}
    for split, per_class, split_seed in (("train", train_per_class, seed), ("test", test_per_class, seed + 1)):
        images, labels = load_split(Path(src), split)
        keep = stratified_indices(labels, per_class, split_seed)
        arrays[f"{split}_images"] = images[keep]
        arrays[f"{split}_labels"] = labels[keep]
        arrays[f"{split}_indices"] = keep
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / SUBSET_NAME
    np.savez_compressed(out, **arrays)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEBIAN_DIR, help="folder with the four IDX .gz files")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder to write the .npz into")
    parser.add_argument("--train-per-class", type=int, default=TRAIN_PER_CLASS)
    parser.add_argument("--test-per-class", type=int, default=TEST_PER_CLASS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    try:
        out = make_subset(args.src, args.out, args.train_per_class, args.test_per_class, args.seed)
    except (ChecksumError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    size = out.stat().st_size
    print(f"wrote {out} ({size / 1e6:.2f} MB): {NUM_CLASSES * args.train_per_class} train, "
          f"{NUM_CLASSES * args.test_per_class} test images")
    if size > MAX_BYTES:
        print(f"error: {out} is {size} bytes, over the {MAX_BYTES}-byte budget; lower --train-per-class",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

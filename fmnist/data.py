"""Fashion-MNIST on disk: find it, verify it, prepare it for torchvision, load it as tensors.

The data lives under ``<root>/FashionMNIST/raw/`` as the four decompressed IDX files, exactly
where ``torchvision.datasets.FashionMNIST(root)`` looks for them. They get there from the first
source that works:

1. files already prepared under the root;
2. a directory holding the four ``.gz`` files (Debian/Ubuntu's ``dataset-fashion-mnist``
   package installs them in ``/usr/share/datasets/fashion-mnist``);
3. torchvision's own download, when online.

Every file is checked before it is used or written: IDX magic number, count, 28x28 shape, labels
in 0..9, and the SHA-256 of the *decompressed* bytes. (Debian re-compressed the ``.gz`` files, so
their md5 differs from torchvision's list while the content is the official data; hashing the
decompressed bytes accepts both.) A bad file is reported by name and never half-used.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fmnist.errors import UserError, reports_user_errors
from fmnist.files import write_bytes_atomically

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPLITS = ("train", "test")
# Pixel statistics of the 60000 training images, scaled to [0, 1].
MEAN, STD = 0.2860, 0.3530

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = PROJECT_ROOT / "data"
SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
SIDE = 28


def how_to_get(source_option: str) -> str:
    """The ways to get the data, naming the option that gives a source directory in the command
    at hand (`data.source_dirs=[DIR]` for train.py, `--source-dir DIR` for fmnist.data)."""
    return (
        "get it one of three ways: (1) go online and run `make data` (torchvision downloads it); "
        "(2) `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, works offline); "
        f"(3) put the four .gz files in a directory and pass it with {source_option}"
    )


@dataclass(frozen=True)
class IdxSpec:
    """What one IDX file must contain."""

    name: str  # file name, without .gz
    magic: int
    count: int
    sha256: str  # of the decompressed bytes


SPECS: dict[str, tuple[IdxSpec, IdxSpec]] = {
    "train": (
        IdxSpec(
            "train-images-idx3-ubyte",
            IMAGE_MAGIC,
            60000,
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        IdxSpec(
            "train-labels-idx1-ubyte",
            LABEL_MAGIC,
            60000,
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
    ),
    "test": (
        IdxSpec(
            "t10k-images-idx3-ubyte",
            IMAGE_MAGIC,
            10000,
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        IdxSpec(
            "t10k-labels-idx1-ubyte",
            LABEL_MAGIC,
            10000,
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ),
}
ALL_SPECS = tuple(spec for pair in SPECS.values() for spec in pair)


class DataError(UserError):
    """A data file is missing, corrupt or not Fashion-MNIST."""


class NoSourceError(UserError):
    """No source could provide the data (its exit code lets `make data` fall back to apt-get)."""

    exit_code = 3


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: `root` if given, else $FMNIST_DATA, else `data/` at the project root."""
    chosen = root or os.environ.get("FMNIST_DATA") or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


def raw_dir(root: Path) -> Path:
    """Where torchvision's FashionMNIST(root) reads the decompressed IDX files."""
    return root / "FashionMNIST" / "raw"


def check_idx(data: bytes, spec: IdxSpec, where: str | Path) -> None:
    """Raise DataError naming `where` unless `data` is exactly the IDX file `spec` describes."""

    def fail(problem: str) -> DataError:
        return DataError(f"{where}: {problem}")

    header = 16 if spec.magic == IMAGE_MAGIC else 8
    if len(data) < header:
        raise fail(f"truncated: {len(data)} bytes is shorter than the {header}-byte IDX header")
    magic, count = struct.unpack(">II", data[:8])
    if magic != spec.magic:
        raise fail(f"bad IDX magic number {magic} (expected {spec.magic}): not a {spec.name} file")
    if count != spec.count:
        raise fail(f"holds {count} items, expected {spec.count}")
    per_item = 1
    if spec.magic == IMAGE_MAGIC:
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (SIDE, SIDE):
            raise fail(f"images are {rows}x{cols}, expected {SIDE}x{SIDE}")
        per_item = SIDE * SIDE
    expected_size = header + count * per_item
    if len(data) != expected_size:
        state = "truncated" if len(data) < expected_size else "too long"
        raise fail(f"{state}: {len(data)} bytes, expected {expected_size}")
    if spec.magic == LABEL_MAGIC and max(data[header:], default=0) >= len(CLASSES):
        raise fail(f"label {max(data[header:])} out of range 0..{len(CLASSES) - 1}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise fail(f"checksum mismatch (sha256 {digest[:12]}..., expected {spec.sha256[:12]}...)")


def _read(path: Path) -> bytes:
    try:
        with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None


def _is_prepared(root: Path) -> bool:
    return all((raw_dir(root) / spec.name).exists() for spec in ALL_SPECS)


def _read_prepared(root: Path, spec: IdxSpec) -> bytes:
    path = raw_dir(root) / spec.name
    data = _read(path)
    try:
        check_idx(data, spec, path)
    except DataError as e:
        raise DataError(
            f"{e}; delete {raw_dir(root)} and run `make data` to prepare it again"
        ) from None
    return data


def _copy_from_dir(source: Path, root: Path) -> None:
    """Decompress and verify all four files in memory first; only then write any of them."""
    contents = {}
    for spec in ALL_SPECS:
        path = source / f"{spec.name}.gz"
        data = _read(path)
        try:
            check_idx(data, spec, path)
        except DataError as e:
            raise DataError(f"{e}; replace the file (or reinstall dataset-fashion-mnist)") from None
        contents[spec.name] = data
    for name, data in contents.items():
        write_bytes_atomically(raw_dir(root) / name, data, "data file")


def _download(root: Path) -> None:
    """torchvision's download into a scratch directory; verified files are then moved in place."""
    from torchvision.datasets import FashionMNIST

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as scratch:
        FashionMNIST(scratch, train=True, download=True)
        _copy_from_raw(raw_dir(Path(scratch)), root)


def _copy_from_raw(source: Path, root: Path) -> None:
    for spec in ALL_SPECS:
        check_idx(_read(source / spec.name), spec, source / spec.name)
    raw_dir(root).mkdir(parents=True, exist_ok=True)
    for spec in ALL_SPECS:
        os.replace(source / spec.name, raw_dir(root) / spec.name)


def _has_all_gz(directory: Path) -> bool:
    return all((directory / f"{spec.name}.gz").is_file() for spec in ALL_SPECS)


def prepare(
    root: str | os.PathLike[str] | None = None,
    source_dirs: tuple[str, ...] | list[str] = SYSTEM_DIRS,
    download: bool = True,
    source_option: str = "data.source_dirs=[DIR]",
) -> str:
    """Make sure verified Fashion-MNIST is under `root`; return where it came from.
    `source_option`: how the command at hand names a source directory, for the error."""
    root = resolve_root(root)
    if _is_prepared(root):
        for spec in ALL_SPECS:
            _read_prepared(root, spec)
        return f"already prepared in {raw_dir(root)}"
    for directory in map(Path, source_dirs):
        if _has_all_gz(directory):
            _copy_from_dir(directory, root)
            return f"prepared in {raw_dir(root)} from the .gz files in {directory}"
    if download:
        try:
            _download(root)
            return f"downloaded by torchvision into {raw_dir(root)}"
        except (RuntimeError, OSError) as e:
            reason = str(e).strip().splitlines()[-1]
            raise NoSourceError(
                f"Fashion-MNIST is not in {root} and the download failed ({reason}); "
                f"{how_to_get(source_option)}"
            ) from None
    raise NoSourceError(
        f"Fashion-MNIST is not in {root} and no source directory has it; "
        f"{how_to_get(source_option)}"
    )


def load_split(
    split: str, root: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The verified `split` ('train' or 'test'): uint8 images (N, 28, 28), int64 labels (N,)."""
    if split not in SPECS:
        raise UserError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    root = resolve_root(root)
    if not _is_prepared(root):
        raise NoSourceError(
            f"Fashion-MNIST is not prepared in {root}: prepare it there with `python -m "
            f"fmnist.data --root {root}` (`make data` prepares the project's data/), or give "
            "data.root=DIR of a prepared copy"
        )
    image_spec, label_spec = SPECS[split]
    images = torch.frombuffer(bytearray(_read_prepared(root, image_spec)[16:]), dtype=torch.uint8)
    labels = torch.frombuffer(bytearray(_read_prepared(root, label_spec)[8:]), dtype=torch.uint8)
    return images.view(-1, SIDE, SIDE), labels.long()


def normalise(images: torch.Tensor, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """uint8 pixels to float32 (x / 255 - mean) / std, where `images` lie. Every path into a model
    (training loader, evaluate, snapshot) normalises here, so the same pixels give the same bits."""
    return images.float().div_(255).sub_(mean).div_(std)


BACKGROUND = (0.0 - MEAN) / STD  # a black pixel, normalised: what crops and shifts pad with


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    """`python -m fmnist.data`: prepare and verify the data, say where it came from."""
    parser = argparse.ArgumentParser(
        prog="python -m fmnist.data", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--root", help="data root (default: $FMNIST_DATA or data/ at the project root)"
    )
    parser.add_argument(
        "--source-dir",
        action="append",
        help=f"a directory with the four .gz files (repeatable; default: {', '.join(SYSTEM_DIRS)})",
    )
    parser.add_argument(
        "--no-download", action="store_true", help="never try torchvision's download"
    )
    args = parser.parse_args(argv)
    sources = args.source_dir or SYSTEM_DIRS
    origin = prepare(args.root, sources, not args.no_download, "--source-dir DIR")
    print(f"Fashion-MNIST {origin}")
    for split in SPLITS:
        _, labels = load_split(split, args.root)
        print(f"  {split}: {len(labels)} images of {SIDE}x{SIDE}, {len(CLASSES)} classes")


if __name__ == "__main__":
    main()

"""The data layer on IDX files the tests write themselves, and on the real dataset."""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from conftest import run_script

from fmnist import data
from fmnist.data import IMAGE_MAGIC, LABEL_MAGIC, DataError, IdxSpec, check_idx


def idx_images(pixels: bytes, count: int, rows: int = 28, cols: int = 28) -> bytes:
    return struct.pack(">IIII", IMAGE_MAGIC, count, rows, cols) + pixels


def idx_labels(labels: bytes, magic: int = LABEL_MAGIC) -> bytes:
    return struct.pack(">II", magic, len(labels)) + labels


def spec_for(content: bytes, magic: int, count: int) -> IdxSpec:
    return IdxSpec("small", magic, count, hashlib.sha256(content).hexdigest())


SMALL_IMAGES = idx_images(bytes(range(256)) * 3 + bytes(784 * 3 - 768), 3)
SMALL_LABELS = idx_labels(bytes([0, 4, 9]))


def test_small_files_pass():
    check_idx(SMALL_IMAGES, spec_for(SMALL_IMAGES, IMAGE_MAGIC, 3), "images")
    check_idx(SMALL_LABELS, spec_for(SMALL_LABELS, LABEL_MAGIC, 3), "labels")


@pytest.mark.parametrize(
    ("content", "magic", "count", "problem"),
    [
        (idx_labels(bytes([1, 2]), magic=2051), LABEL_MAGIC, 2, "bad IDX magic number 2051"),
        (SMALL_LABELS[:-1], LABEL_MAGIC, 3, "truncated: 10 bytes, expected 11"),
        (SMALL_LABELS[:5], LABEL_MAGIC, 3, "shorter than the 8-byte IDX header"),
        (SMALL_LABELS + b"\0", LABEL_MAGIC, 3, "too long"),
        (SMALL_LABELS, LABEL_MAGIC, 4, "holds 3 items, expected 4"),
        (idx_labels(bytes([0, 10, 3])), LABEL_MAGIC, 3, "label 10 out of range 0..9"),
        (idx_images(bytes(2 * 32 * 32), 2, 32, 32), IMAGE_MAGIC, 2, "images are 32x32"),
        (SMALL_IMAGES[:-100], IMAGE_MAGIC, 3, "truncated"),
    ],
)
def test_integrity_failures_name_the_file_and_the_problem(content, magic, count, problem):
    spec = IdxSpec("small", magic, count, "0" * 64)
    with pytest.raises(DataError, match=r"^some/file: ") as e:
        check_idx(content, spec, "some/file")
    assert problem in str(e.value)


def test_checksum_mismatch_is_reported():
    spec = spec_for(SMALL_LABELS, LABEL_MAGIC, 3)
    tampered = idx_labels(bytes([0, 4, 8]))
    with pytest.raises(DataError, match="checksum mismatch"):
        check_idx(tampered, spec, "labels")


def test_no_source_lists_the_three_ways(tmp_path):
    with pytest.raises(data.NoSourceError) as e:
        data.prepare(tmp_path / "root", source_dirs=[str(tmp_path)], download=False)
    message = str(e.value)
    assert "\n" not in message
    for way in ("make data", "apt-get install dataset-fashion-mnist", "data.source_dirs"):
        assert way in message
    assert not (tmp_path / "root").exists()


@pytest.mark.slow
def test_cli_without_source_exits_3_with_one_line(tmp_path):
    result = run_script(
        "-m", "fmnist.data", "--root", str(tmp_path), "--source-dir", str(tmp_path), "--no-download"
    )
    assert result.returncode == 3
    assert result.stderr.startswith("error: Fashion-MNIST is not in")
    assert len(result.stderr.strip().splitlines()) == 1


def test_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("FMNIST_DATA", raising=False)
    assert data.resolve_root() == data.PROJECT_ROOT / "data"
    monkeypatch.setenv("FMNIST_DATA", str(tmp_path))
    assert data.resolve_root() == tmp_path
    assert data.resolve_root(tmp_path / "x") == tmp_path / "x"


# --- the real dataset ----------------------------------------------------------------------------


@pytest.fixture
def gz_copy(data_root, tmp_path) -> Path:
    """The four real files, gzipped into a directory of our own (a user-named source)."""
    source = tmp_path / "source"
    source.mkdir()
    for spec in data.ALL_SPECS:
        with gzip.open(source / f"{spec.name}.gz", "wb", compresslevel=1) as f:
            f.write((data.raw_dir(data_root) / spec.name).read_bytes())
    return source


def test_prepare_from_a_directory_of_gz_files(gz_copy, tmp_path):
    origin = data.prepare(tmp_path / "root", source_dirs=[str(gz_copy)], download=False)
    assert str(gz_copy) in origin
    images, _ = data.load_split("test", tmp_path / "root")
    assert images.shape == (10000, 28, 28)
    assert data.prepare(tmp_path / "root", download=False).startswith("already prepared")


def test_corrupt_source_file_is_never_half_used(gz_copy, tmp_path):
    labels = gz_copy / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[100] = (
        content[100] + 1
    ) % 10  # a wrong label, still in range: only the checksum sees it
    labels.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError, match=f"^{re.escape(str(labels))}: checksum mismatch"):
        data.prepare(tmp_path / "root", source_dirs=[str(gz_copy)], download=False)
    assert not data.raw_dir(tmp_path / "root").exists()  # nothing written, not even the good files


def test_truncated_gz_is_reported(gz_copy, tmp_path):
    images = gz_copy / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    with pytest.raises(DataError, match=f"^{re.escape(str(images))}: cannot be read"):
        data.prepare(tmp_path / "root", source_dirs=[str(gz_copy)], download=False)


@pytest.mark.slow
def test_loader_with_a_corrupted_prepared_file_gives_one_line(data_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(data.raw_dir(data_root), data.raw_dir(root))
    bad = data.raw_dir(root) / "train-images-idx3-ubyte"
    with open(bad, "r+b") as f:
        f.seek(5000)
        f.write(b"\xff" * 10)
    result = run_script("-m", "fmnist.data", "--root", str(root), "--no-download")
    assert result.returncode == 2
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0]
    assert f"error: {bad}: checksum mismatch" in result.stderr
    assert "Traceback" not in result.stderr


def test_real_dataset_statistics(data_root):
    train_images, train_labels = data.load_split("train", data_root)
    test_images, test_labels = data.load_split("test", data_root)
    assert train_images.shape == (60000, 28, 28) and train_images.dtype == torch.uint8
    assert test_images.shape == (10000, 28, 28)
    assert torch.bincount(train_labels).tolist() == [6000] * 10
    assert torch.bincount(test_labels).tolist() == [1000] * 10
    pixels = train_images.double() / 255
    assert pixels.mean().item() == pytest.approx(data.MEAN, abs=1e-4)
    assert pixels.std().item() == pytest.approx(data.STD, abs=1e-4)


def test_torchvision_reads_the_prepared_root(data_root):
    from torchvision.datasets import FashionMNIST

    dataset = FashionMNIST(str(data_root), train=False, download=False)
    images, labels = data.load_split("test", data_root)
    assert dataset.classes == list(data.CLASSES)
    assert torch.equal(dataset.data, images) and torch.equal(dataset.targets, labels)


@pytest.mark.slow
def test_cli_reports_source_and_sizes(data_root):
    result = run_script("-m", "fmnist.data", "--no-download")
    assert result.returncode == 0, result.stderr
    assert "already prepared" in result.stdout
    assert "train: 60000 images" in result.stdout and "test: 10000 images" in result.stdout

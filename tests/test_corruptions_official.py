"""Official -C data: streamed download with resume/restart, checksums, safe extraction, layout checks.

The HTTP boundary is a local server (with range support) or a file:// URL; the download, resume,
checksum, deletion and extraction code is qgen's own, unmocked.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qgen.corruptions import CORRUPTIONS, SEVERITIES, official
from qgen.corruptions.layout import npy_problems

PAYLOAD = bytes(range(256)) * 400  # 100 kB


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (path -> bytes), honouring ``Range: bytes=N-``; records each request."""

    def do_GET(self) -> None:
        body = self.server.files.get(self.path)  # type: ignore[attr-defined]
        self.server.requests.append((self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        if body is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.files, httpd.requests = {}, []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def url(server: http.server.HTTPServer, path: str) -> str:
    return f"http://127.0.0.1:{server.server_port}{path}"


def archive_of(location: str, body: bytes, algorithm: str = "sha256") -> official.Archive:
    return official.Archive(location, algorithm, hashlib.new(algorithm, body).hexdigest(), CORRUPTIONS)


def test_download_verifies_and_leaves_no_partial_file(server, tmp_path: Path) -> None:
    server.files["/x.tar"] = PAYLOAD
    dest = official.fetch(archive_of(url(server, "/x.tar"), PAYLOAD, "md5"), tmp_path / "x.tar")
    assert dest.read_bytes() == PAYLOAD and sorted(p.name for p in tmp_path.iterdir()) == ["x.tar"]


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path: Path) -> None:
    server.files["/x.tar"] = PAYLOAD
    (tmp_path / "x.tar.part").write_bytes(PAYLOAD[:30000])
    official.fetch(archive_of(url(server, "/x.tar"), PAYLOAD), tmp_path / "x.tar")
    assert (tmp_path / "x.tar").read_bytes() == PAYLOAD
    assert server.requests == [("/x.tar", "bytes=30000-")]


def test_a_complete_partial_file_is_finished_without_new_data(server, tmp_path: Path) -> None:
    server.files["/x.tar"] = PAYLOAD
    (tmp_path / "x.tar.part").write_bytes(PAYLOAD)
    official.fetch(archive_of(url(server, "/x.tar"), PAYLOAD), tmp_path / "x.tar")
    assert (tmp_path / "x.tar").read_bytes() == PAYLOAD


def test_a_server_without_ranges_restarts_the_download(tmp_path: Path) -> None:
    source = tmp_path / "source.tar"
    source.write_bytes(PAYLOAD)
    (tmp_path / "x.tar.part").write_bytes(b"stale bytes from another file")
    official.fetch(archive_of(source.as_uri(), PAYLOAD), tmp_path / "x.tar")
    assert (tmp_path / "x.tar").read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_file_and_names_the_expected_checksum(server, tmp_path: Path) -> None:
    server.files["/x.tar"] = PAYLOAD[:-1] + b"!"
    archive = archive_of(url(server, "/x.tar"), PAYLOAD)
    with pytest.raises(ValueError, match=f"expected sha256 {archive.checksum}, got "):
        official.fetch(archive, tmp_path / "x.tar")
    assert list(tmp_path.iterdir()) == []


def tar_with(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


@pytest.mark.parametrize("bad", ["../evil.npy", "CIFAR-100-C/../../evil.npy", "/tmp/evil.npy"])
def test_extraction_refuses_parent_and_absolute_paths(tmp_path: Path, bad: str) -> None:
    archive = tar_with(tmp_path / "bad.tar", {"CIFAR-100-C/fog.npy": b"x", bad: b"evil"})
    with pytest.raises(ValueError, match="refusing to extract member"):
        official.safe_extract(archive, tmp_path / "root")
    assert not (tmp_path / "evil.npy").exists() and not (tmp_path / "root" / "fog.npy").exists()


def test_extraction_refuses_links_out_of_the_root(tmp_path: Path) -> None:
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("CIFAR-100-C/fog.npy")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match=r"refusing to extract member 'CIFAR-100-C/fog\.npy'"):
        official.safe_extract(archive, tmp_path / "root")


def cifar_c_tar(path: Path, n: int = 3) -> Path:
    """A miniature CIFAR-100-C.tar: the official member names and shapes, n images per severity."""
    members = {}
    for name in (*CORRUPTIONS, "labels"):
        shape = (5 * n,) if name == "labels" else (5 * n, 32, 32, 3)
        buffer = io.BytesIO()
        np.save(buffer, np.full(shape, len(name), np.uint8))
        members[f"CIFAR-100-C/{name}.npy"] = buffer.getvalue()
    members["CIFAR-100-C/README.txt"] = b"not part of the layout"
    return tar_with(path, members)


def test_prepare_downloads_extracts_checks_and_then_never_downloads_again(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = cifar_c_tar(tmp_path / "CIFAR-100-C.tar").read_bytes()
    server.files["/CIFAR-100-C.tar"] = body
    monkeypatch.setitem(official.ARCHIVES, "cifar100", (archive_of(url(server, "/CIFAR-100-C.tar"), body),))
    root = tmp_path / "cifar100-c"
    official.prepare_official("cifar100", root, num_classes=100)
    assert npy_problems(root) == [] and not (root / "archives").exists()
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [f"{c}.npy" for c in CORRUPTIONS] + ["labels.npy"]
    )
    assert np.load(root / "fog.npy").shape == (15, 32, 32, 3) and len(SEVERITIES) * 3 == 15
    official.prepare_official("cifar100", root, num_classes=100)
    assert len(server.requests) == 1


def test_an_incomplete_user_copy_is_an_error_when_downloads_are_off(tmp_path: Path) -> None:
    root = tmp_path / "CIFAR-100-C"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match=r"labels\.npy is missing.*downloading is disabled"):
        official.prepare_official("cifar100", root, num_classes=100, download=False)
    with pytest.raises(ValueError, match="no official corrupted version of 'digits'"):
        official.prepare_official("digits", root, num_classes=10)

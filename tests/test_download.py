import hashlib
import io
import tarfile
import time
import zipfile

import pytest

from diffinv.workflow.download import ChecksumError, DownloadError, Lockfile, fetch, safe_extract
from diffinv.digest import file_digest
from httpserver import http_server, loopback_only  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("loopback_only")

DATA = b"diffinv test payload " * 1000
SHA = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()


def test_fetch_verifies_sha256_and_md5(http_server, tmp_path):
    url = http_server.add("/a.bin", DATA)
    dest = fetch(url, tmp_path / "sub" / "a.bin", sha256=SHA, md5=MD5.upper(), backoff=0)
    assert dest.read_bytes() == DATA and file_digest(dest) == SHA and file_digest(dest, "md5") == MD5
    assert http_server.counts["/a.bin"] == 1
    assert http_server.log[0].headers["user-agent"].startswith("diffinv/")
    assert not list(tmp_path.rglob("*.part"))


def test_corrupt_file_retried_then_checksum_error(http_server, tmp_path):
    url = http_server.add("/a.bin", DATA, corrupt=100)
    dest = tmp_path / "a.bin"
    with pytest.raises(ChecksumError) as info:
        fetch(url, dest, sha256=SHA, retries=3, backoff=0)
    message = str(info.value)
    bad = hashlib.sha256(http_server.routes["/a.bin"].bad_bytes()).hexdigest()
    assert SHA in message and bad in message and "sha256" in message and str(dest) in message and url in message
    assert http_server.counts["/a.bin"] == 3
    assert not dest.exists() and not list(tmp_path.iterdir())


def test_md5_alone_is_checked(http_server, tmp_path):
    url = http_server.add("/a.bin", DATA)
    with pytest.raises(ChecksumError, match=f"md5 mismatch .*expected {'0' * 32}, got {MD5}"):
        fetch(url, tmp_path / "a.bin", md5="0" * 32, retries=1)


def test_corrupt_once_then_good_succeeds(http_server, tmp_path):
    url = http_server.add("/a.bin", DATA, corrupt=1)
    assert fetch(url, tmp_path / "a.bin", sha256=SHA, backoff=0).read_bytes() == DATA
    assert http_server.counts["/a.bin"] == 2


@pytest.mark.parametrize("where", ["delay", "stall"])
def test_stalled_server_times_out_per_attempt(http_server, tmp_path, where):
    url = http_server.add("/slow.bin", DATA, **{where: 30.0})
    dest = tmp_path / "slow.bin"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch(url, dest, retries=2, timeout=0.5, backoff=0)
    elapsed = time.monotonic() - start
    assert not isinstance(info.value, ChecksumError)
    assert url in str(info.value) and str(dest) in str(info.value) and "Timeout" in str(info.value)
    assert 0.9 < elapsed < 3.0
    assert http_server.counts["/slow.bin"] == 2
    assert not list(tmp_path.iterdir())  # neither dest nor .part


def test_truncated_body_is_retried_then_error(http_server, tmp_path):
    # The connection closes before Content-Length bytes: http.client returns b"" rather than raising.
    url = http_server.add("/short.bin", DATA, headers={"Content-Length": str(len(DATA) + 100)})
    with pytest.raises(DownloadError, match="truncated body"):
        fetch(url, tmp_path / "short.bin", retries=2, backoff=0)
    assert http_server.counts["/short.bin"] == 2 and not list(tmp_path.iterdir())


def test_404_is_not_retried(http_server, tmp_path):
    with pytest.raises(DownloadError, match="404") as info:
        fetch(http_server.url_for("/missing.jpg"), tmp_path / "m.jpg", retries=5, backoff=0)
    assert "missing.jpg" in str(info.value) and "m.jpg" in str(info.value)
    assert http_server.counts["/missing.jpg"] == 1


def test_500_is_retried(http_server, tmp_path):
    url = http_server.add("/err", b"oops", status=503)
    with pytest.raises(DownloadError, match="503"):
        fetch(url, tmp_path / "e", retries=3, backoff=0)
    assert http_server.counts["/err"] == 3


def test_existing_good_file_needs_no_request(http_server, tmp_path):
    url = http_server.add("/a.bin", DATA)
    dest = tmp_path / "a.bin"
    dest.write_bytes(DATA)
    assert fetch(url, dest, sha256=SHA) == dest
    assert http_server.counts["/a.bin"] == 0


def test_existing_bad_file_is_replaced(http_server, tmp_path):
    url = http_server.add("/a.bin", DATA)
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"stale")
    fetch(url, dest, sha256=SHA, backoff=0)
    assert dest.read_bytes() == DATA and http_server.counts["/a.bin"] == 1


def test_lockfile_records_then_refuses_a_change(tmp_path):
    path = tmp_path / "lock.csv"
    lock = Lockfile(path)
    lock.check_or_record("b.jpg", "b" * 64)
    lock.check_or_record("a.jpg", "a" * 64)
    lock.save()
    assert path.read_text() == f"name,sha256\na.jpg,{'a' * 64}\nb.jpg,{'b' * 64}\n"
    again = Lockfile(path)
    assert again.expected("a.jpg") == "a" * 64 and again.expected("c.jpg") is None
    again.check_or_record("a.jpg", "a" * 64)  # same digest: fine
    with pytest.raises(ChecksumError) as info:
        again.check_or_record("a.jpg", "c" * 64)
    assert str(path) in str(info.value) and "a.jpg" in str(info.value)
    assert "a" * 64 in str(info.value) and "c" * 64 in str(info.value)


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("evil", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_safe_extract_refuses_zip_members_outside(tmp_path, evil):
    archive = _zip(tmp_path / "a.zip", {"good.txt": b"good", evil: b"evil"})
    target = tmp_path / "out"
    with pytest.raises(ValueError) as info:
        safe_extract(archive, target)
    assert str(archive) in str(info.value) and evil in str(info.value)
    assert not (tmp_path / "evil.txt").exists() and not list(target.rglob("*"))
    # The good member alone is fine.
    assert safe_extract(archive, target, members=["good.txt"]) == [target / "good.txt"]
    assert (target / "good.txt").read_bytes() == b"good"


def test_safe_extract_missing_member(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"good.txt": b"good"})
    with pytest.raises(ValueError, match="nope.txt"):
        safe_extract(archive, tmp_path / "out", members=["good.txt", "nope.txt"])


def _tar(path, files, links=()):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target, kind in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return path


def test_safe_extract_tar(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", {"d/good.txt": b"good"}, [("d/alias", "good.txt", tarfile.SYMTYPE)])
    target = tmp_path / "out"
    assert safe_extract(archive, target) == [target / "d/good.txt", target / "d/alias"]
    assert (target / "d/alias").read_bytes() == b"good"


@pytest.mark.parametrize("link", [("passwd", "/etc/passwd", tarfile.SYMTYPE),
                                  ("d/up", "../../x", tarfile.SYMTYPE),
                                  ("hard", "../outside", tarfile.LNKTYPE)])
def test_safe_extract_refuses_tar_links_outside(tmp_path, link):
    archive = _tar(tmp_path / "a.tar", {"good.txt": b"good"}, [link])
    target = tmp_path / "out"
    with pytest.raises(ValueError) as info:
        safe_extract(archive, target)
    assert str(archive) in str(info.value) and link[0] in str(info.value)
    assert not list(target.rglob("*"))


def test_safe_extract_refuses_non_archive(tmp_path):
    path = tmp_path / "x.zip"
    path.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a zip or tar"):
        safe_extract(path, tmp_path / "out")


def test_network_guard_refuses_remote_hosts(loopback_only, tmp_path):
    with pytest.raises(DownloadError, match="huggingface.co"):
        fetch("https://huggingface.co/x.bin", tmp_path / "x.bin", retries=2, backoff=0)
    assert loopback_only == ["huggingface.co", "huggingface.co"]


def test_two_lockfiles_saving_one_file_keep_both_records_and_refuse_a_conflict(tmp_path):
    """Two presets acquiring one dataset at once each hold the lock file in memory: saving merges what the
    other saved meanwhile instead of dropping it, and a name recorded with two digests stops the second."""
    from diffinv.workflow.download import ChecksumError, Lockfile

    path = tmp_path / "images.lock.csv"
    first, second = Lockfile(path), Lockfile(path)
    first.check_or_record("a.jpg", "a" * 64)
    second.check_or_record("b.jpg", "b" * 64)
    first.save()
    second.save()
    assert Lockfile(path).entries == {"a.jpg": "a" * 64, "b.jpg": "b" * 64}
    third = Lockfile(tmp_path / "other.lock.csv")
    third.path = path  # read before the records above existed
    third.entries = {"a.jpg": "c" * 64}
    with pytest.raises(ChecksumError, match="a.jpg"):
        third.save()
    assert Lockfile(path).entries["a.jpg"] == "a" * 64

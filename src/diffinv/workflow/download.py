"""Verified downloads: atomic, retrying HTTP fetches, trust-on-first-use checksum locks and archive
extraction that cannot write outside its target folder.

Only the standard library is used (``urllib.request``), so the same code fetches COCO/NOCAPS images,
annotation zips and torchvision weights. Every failure names the URL and the destination.
"""

from __future__ import annotations

import csv
import http.client
import io
import os
import re
import ssl
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

from .. import __version__
from ..digest import CHUNK, file_digests

USER_AGENT = f"diffinv/{__version__} (research replication; Python urllib)"
# Status codes that will not change on a retry (RFC 9110 §15.5.5, §15.5.11).
PERMANENT_HTTP = frozenset({404, 410})
# Failures of the connection or the server, worth another attempt. urllib wraps connect/send errors
# in URLError, but a timeout while waiting for the status line or reading the body surfaces as a
# bare TimeoutError (= socket.timeout).
_NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, ssl.SSLError)
_HEX = {"sha256": re.compile(r"[0-9a-f]{64}"), "md5": re.compile(r"[0-9a-f]{32}")}


class DownloadError(RuntimeError):
    """A download failed (HTTP error, network error, timeout or truncated body)."""


class ChecksumError(DownloadError):
    """A file's digest differs from the expected one. Build it with :meth:`mismatch`, whose message
    names the file, the algorithm and both sums; ``algorithm``/``expected``/``actual`` keep them."""

    def __init__(self, message: str, *, algorithm: str = "", expected: str = "", actual: str = "") -> None:
        super().__init__(message)
        self.algorithm, self.expected, self.actual = algorithm, expected, actual

    @classmethod
    def mismatch(cls, what: str, algorithm: str, expected: str, actual: str, note: str = "") -> ChecksumError:
        return cls(f"{algorithm} mismatch for {what}: expected {expected}, got {actual}{note}",
                   algorithm=algorithm, expected=expected, actual=actual)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text with LF line ends via a temporary file in the same folder and ``os.replace``,
    so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Transient(Exception):
    """A failure another attempt may not repeat; carries the reason for the final error."""


def _first_mismatch(expected: dict[str, str], path: Path) -> tuple[str, str] | None:
    for alg, actual in file_digests(path, expected).items():
        if actual != expected[alg]:
            return alg, actual
    return None


def _stream(opener: urllib.request.OpenerDirector, request: urllib.request.Request, part: Path,
            timeout: float) -> None:
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise  # the caller tells permanent from transient status codes
    except _NETWORK_ERRORS as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
    received = 0
    with response, part.open("wb") as out:
        while True:
            try:
                chunk = response.read(CHUNK)  # `timeout` bounds each socket read: a stall fails
            except _NETWORK_ERRORS as exc:
                raise _Transient(f"{type(exc).__name__} after {received} bytes: {exc}") from exc
            if not chunk:
                break
            out.write(chunk)
            received += len(chunk)
    # http.client returns b"" instead of raising when a connection closes before Content-Length.
    length = response.headers.get("Content-Length")
    if length is not None and response.headers.get("Content-Encoding", "identity") == "identity" \
            and received != int(length):
        raise _Transient(f"truncated body: {received} of {length} bytes")


def fetch(url: str, dest: str | os.PathLike, *, sha256: str | None = None, md5: str | None = None,
          retries: int = 3, timeout: float = 60.0, backoff: float = 1.0,
          opener: urllib.request.OpenerDirector | None = None) -> Path:
    """Download ``url`` to ``dest`` and verify the given digests; return ``dest``.

    The body is streamed into a temporary file beside ``dest`` (its own name, so two processes fetching
    the same file do not share it) and moved into place with ``os.replace`` only after it verified, so
    ``dest`` never exists half-written. ``timeout`` applies to each socket read, so a
    server that stalls fails instead of hanging. A digest mismatch, HTTP error, network error,
    timeout or truncated body is retried (``retries`` attempts in all, sleeping ``backoff * 2**k``
    between them); HTTP 404/410 are permanent and fail at once. An existing ``dest`` matching every
    given digest is returned without network access; one that does not match is deleted and
    downloaded again. Without digests the file is always downloaded (nothing to check an existing
    file against); use :class:`Lockfile` to pin what the first download saw.
    """
    if retries < 1:
        raise ValueError(f"retries must be >= 1, got {retries}")
    dest = Path(dest)
    expected = {alg: d.lower() for alg, d in (("sha256", sha256), ("md5", md5)) if d is not None}
    for alg, digest in expected.items():
        if not _HEX[alg].fullmatch(digest):
            raise ValueError(f"{alg} for {url} is not a hex digest: {digest!r}")
    if expected and dest.is_file():
        if _first_mismatch(expected, dest) is None:
            return dest
        dest.unlink()  # known bad: do not leave it where a later reader might trust it
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    part = Path(name)
    opener = opener or urllib.request.build_opener()
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    failure: ChecksumError | None = None
    reason, cause = "", None
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        failure = None
        try:
            _stream(opener, request, part, timeout)
            mismatch = _first_mismatch(expected, part)
            if mismatch is None:
                os.replace(part, dest)
                return dest
            alg, actual = mismatch
            failure = ChecksumError.mismatch(f"{dest} (from {url})", alg, expected[alg], actual,
                                             f" (after {attempt + 1} of {retries} attempts)")
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response's socket
            if exc.code in PERMANENT_HTTP:
                raise DownloadError(f"cannot download {url} to {dest}: HTTP {exc.code} {exc.reason} "
                                    "(permanent, not retried)") from exc
            reason, cause = f"HTTP {exc.code} {exc.reason}", exc
        except _Transient as exc:
            reason, cause = str(exc), exc.__cause__ or exc
        finally:
            part.unlink(missing_ok=True)
    if failure is not None:  # the last attempt delivered bytes, but the wrong ones
        raise failure
    raise DownloadError(f"cannot download {url} to {dest} after {retries} attempts: {reason}") from cause


class Lockfile:
    """Trust-on-first-use SHA-256 records: a CSV ``name,sha256`` sorted by name.

    The first download of a name records its digest; every later one must match it, so a file that
    changes on the server (or on disk) is caught. Call :meth:`save` to persist new entries: it merges
    them with what another process (another preset acquiring the same dataset) saved meanwhile.
    """

    COLUMNS = ("name", "sha256")

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.entries: dict[str, str] = self._read()

    def _read(self) -> dict[str, str]:
        entries: dict[str, str] = {}
        if self.path.exists():
            with self.path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if tuple(reader.fieldnames or ()) != self.COLUMNS:
                    raise ValueError(f"{self.path}: lock file header must be {','.join(self.COLUMNS)}, "
                                     f"got {reader.fieldnames}")
                for row in reader:
                    name, digest = row["name"], row["sha256"]
                    if name in entries:
                        raise ValueError(f"{self.path}, line {reader.line_num}: duplicate entry {name!r}")
                    if not _HEX["sha256"].fullmatch(digest or ""):
                        raise ValueError(f"{self.path}, line {reader.line_num}: bad sha256 {digest!r}")
                    entries[name] = digest
        return entries

    def expected(self, name: str) -> str | None:
        return self.entries.get(name)

    def check_or_record(self, name: str, digest: str) -> None:
        """Record ``digest`` for a new ``name``; raise :class:`ChecksumError` if it differs from the record."""
        digest = digest.lower()
        if not _HEX["sha256"].fullmatch(digest):
            raise ValueError(f"{self.path}: {digest!r} for {name!r} is not a sha256 hex digest")
        known = self.entries.get(name)
        if known is not None and known != digest:
            raise ChecksumError.mismatch(f"entry {name!r} of lock file {self.path}", "sha256", known, digest)
        self.entries[name] = digest

    def save(self) -> None:
        """Write the entries, merged under an exclusive lock with those saved since this object read the
        file; a name recorded there with another digest raises :class:`ChecksumError`."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.flock"), "w") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # released when the file closes
            for name, digest in self._read().items():
                self.check_or_record(name, digest)
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(self.COLUMNS)
            writer.writerows(sorted(self.entries.items()))
            atomic_write_text(self.path, out.getvalue())


def _refuse_outside(archive: Path, name: str, root: Path, path: Path, what: str = "member") -> None:
    if PurePosixPath(name).is_absolute() or name.startswith("\\") or PureWindowsPath(name).drive:
        raise ValueError(f"{archive}: refusing {what} {name!r}: absolute path")
    if not path.resolve().is_relative_to(root):
        raise ValueError(f"{archive}: refusing {what} {name!r}: it leaves the target folder {root}")


def _select(archive: Path, names: list[str], members: Iterable[str] | None) -> list[str]:
    if members is None:
        return names
    members = list(members)
    missing = sorted(set(members) - set(names))
    if missing:
        raise ValueError(f"{archive}: members not in the archive: {', '.join(missing)}")
    return members


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike,
                 members: Iterable[str] | None = None) -> list[Path]:
    """Extract a zip or tar (any compression ``tarfile`` reads) archive into ``target``; return the
    extracted paths.

    Only ``members`` are extracted if given. Absolute member names, names that resolve outside
    ``target`` (``..``), tar links pointing outside ``target`` and tar device/FIFO members raise
    ``ValueError`` naming the archive and the member, before anything is written. Tar extraction
    additionally uses Python's ``"data"`` filter (PEP 706) as a second line of defence.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            chosen = _select(archive, zf.namelist(), members)
            for name in chosen:
                _refuse_outside(archive, name, root, root / name)
            return [Path(zf.extract(name, target)) for name in chosen]
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            by_name = {m.name: m for m in tf.getmembers()}
            chosen = [by_name[n] for n in _select(archive, list(by_name), members)]
            for m in chosen:
                _refuse_outside(archive, m.name, root, root / m.name)
                if m.issym():  # relative to the link's own folder
                    _refuse_outside(archive, m.linkname, root, root / PurePosixPath(m.name).parent / m.linkname,
                                    f"symlink {m.name!r} ->")
                elif m.islnk():  # relative to the archive root
                    _refuse_outside(archive, m.linkname, root, root / m.linkname, f"hardlink {m.name!r} ->")
                elif not (m.isfile() or m.isdir()):
                    raise ValueError(f"{archive}: refusing member {m.name!r}: not a file, folder or link")
            for m in chosen:
                tf.extract(m, target, filter="data")
            return [target / m.name for m in chosen]
    raise ValueError(f"{archive}: not a zip or tar archive")

"""File digests, one chunked pass for several algorithms (multi-GB files need no memory): the one hashing
function every layer uses (downloads, lock files, Hub snapshots, LPIPS trunks, images in checkpoints)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

CHUNK = 1 << 20


def file_digests(path: str | os.PathLike, algorithms: Iterable[str], *,
                 prefix: dict[str, bytes] | None = None) -> dict[str, str]:
    """Hex digests of a file for several algorithms; ``prefix[alg]`` is hashed before the file's bytes (git's
    blob header, for one)."""
    hashes = {alg: hashlib.new(alg) for alg in algorithms}
    for alg, head in (prefix or {}).items():
        hashes[alg].update(head)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashes.values():
                h.update(chunk)
    return {alg: h.hexdigest() for alg, h in hashes.items()}


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    return file_digests(path, [algorithm])[algorithm]

"""A fake Hugging Face Hub on the local test server: the requests snapshot_download makes for a
commit revision (huggingface_hub 2.x; see tests/test_hub.py for the protocol)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

from httpserver import LocalServer


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith((".safetensors", ".bin"))


def serve_repo(server: LocalServer, repo: str, commit: str, files: dict[str, bytes]) -> None:
    """Serve ``files`` as model repository ``repo`` at ``commit``: git files directly, LFS files via a
    redirect to another host name (as the real CDN is)."""
    cdn = server.url.replace("127.0.0.1", "localhost")  # another host, as the real CDN is
    folders = sorted({str(parent) for p in files for parent in PurePosixPath(p).parents} - {"."})
    tree = [{"type": "directory", "path": d, "oid": "0" * 40, "size": 0} for d in folders]
    for path, data in files.items():
        sha256 = hashlib.sha256(data).hexdigest()
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_sha1(data)}
        headers = {"X-Repo-Commit": commit}
        if is_lfs(path):
            entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 130}
            headers |= {"Location": f"{cdn}/cdn/{sha256}", "X-Linked-Etag": f'"{sha256}"',
                        "X-Linked-Size": str(len(data)), "ETag": f'"{git_sha1(data)}"'}
            server.add(f"/{repo}/resolve/{commit}/{path}", b"", status=302, headers=headers)
            server.add(f"/cdn/{sha256}", data)
        else:
            server.add(f"/{repo}/resolve/{commit}/{path}", data, headers=headers | {"ETag": f'"{git_sha1(data)}"'})
        tree.append(entry)
    server.add(f"/api/models/{repo}/tree/{commit}", json.dumps(tree).encode(),
               headers={"Content-Type": "application/json"})


def fetch_through_hub(server: LocalServer, repo: str, commit: str, folder: Path, decoys: dict[str, bytes],
                      cache: Path) -> Path:
    """Serve the diffusers ``folder`` (plus ``decoys``, files a snapshot must skip) as ``repo`` at ``commit``,
    snapshot it through the real download code, and check it brought back exactly the folder's files."""
    from diffinv.workflow.data.hub import SD_ALLOW, SD_IGNORE, snapshot

    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    serve_repo(server, repo, commit, files | decoys)
    out = snapshot(repo, commit, cache, allow_patterns=SD_ALLOW, ignore_patterns=SD_IGNORE, endpoint=server.url)
    fetched = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert fetched == set(files), (repo, fetched ^ set(files))
    return out

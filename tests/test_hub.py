"""snapshot() against a local fake Hub speaking the subset of the protocol snapshot_download uses
with a commit revision (huggingface_hub 2.x, read from _snapshot_download.py / file_download.py):

1. GET  /api/models/{repo}/tree/{commit}?recursive=True&expand=False  -> JSON list of files
   (path, size, oid = git blob sha1, lfs = {oid: sha256, size, pointerSize}) and directories;
2. HEAD /{repo}/resolve/{commit}/{path} -> X-Repo-Commit and ETag (git sha1) for git files, or for
   LFS files a 302 to a CDN host with X-Linked-Etag (sha256) and X-Linked-Size;
3. GET of the resolve URL, or of the CDN location for LFS files.
No X-Xet-Hash headers and no xetHash in the tree, so hf_xet is never used.
"""

import hashlib
import json

import pytest

from diffinv.workflow.data.hub import SD_ALLOW, SD_IGNORE, snapshot, verify_snapshot, write_weights_manifest
from diffinv.workflow.download import ChecksumError
from fakehub import git_sha1, serve_repo
from httpserver import http_server, loopback_only  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("loopback_only")

REPO = "CompVis/tiny-sd"
COMMIT = "133a221b8aa7292a167afc5127cb63fb5005638b"
FILES = {
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    "model_index.json": b'{"_class_name": "StableDiffusionPipeline"}\n',
    "unet/config.json": b'{"sample_size": 8}\n',
    "tokenizer/merges.txt": b"#version: 0.2\n",
    "unet/diffusion_pytorch_model.safetensors": b"fp32 weights \x00\x01\x02",
    "unet/diffusion_pytorch_model.fp16.safetensors": b"fp16 weights",
    "unet/diffusion_pytorch_model.bin": b"pickled weights",
    "safety_checker/model.safetensors": b"safety checker",
}
EXPECTED = {"model_index.json", "unet/config.json", "tokenizer/merges.txt", "unet/diffusion_pytorch_model.safetensors"}


@pytest.fixture
def hub(http_server, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub reads its environment at import time: patch the constants too.
    for name, value in [("HF_HUB_DISABLE_TELEMETRY", True), ("HF_HUB_OFFLINE", False),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", True)]:
        monkeypatch.setenv(name, "1" if value else "0")
        monkeypatch.setattr(constants, name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    serve_repo(http_server, REPO, COMMIT, FILES)
    return http_server


def test_snapshot_downloads_only_allowed_files_and_verifies(hub, tmp_path, loopback_only):
    folder = snapshot(REPO, COMMIT, tmp_path / "cache", allow_patterns=SD_ALLOW, ignore_patterns=SD_IGNORE,
                      endpoint=hub.url)
    assert folder == (tmp_path / "cache" / "models--CompVis--tiny-sd" / "snapshots" / COMMIT).resolve()
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == EXPECTED
    assert all((folder / p).is_symlink() and (folder / p).read_bytes() == FILES[p] for p in EXPECTED)
    for path in FILES.keys() - EXPECTED:  # filtered files are never requested
        assert not any(r.path.endswith(path) or r.path.endswith(hashlib.sha256(FILES[path]).hexdigest())
                       for r in hub.log), path
    assert loopback_only == []  # nothing tried to reach huggingface.co (or anything else)

    files = verify_snapshot(folder)
    assert [f["path"] for f in files] == sorted(EXPECTED)
    assert all(f["verified"] and f["sha256"] == hashlib.sha256(FILES[f["path"]]).hexdigest()
               and f["size"] == len(FILES[f["path"]]) for f in files)

    manifest = write_weights_manifest(folder, tmp_path / "sd.manifest.json")
    assert json.loads((tmp_path / "sd.manifest.json").read_text()) == manifest
    assert manifest["repo_id"] == REPO and manifest["revision"] == COMMIT and manifest["files"] == files

    # A second call finds everything in the cache (tree listing included): no request at all.
    before = len(hub.log)
    assert snapshot(REPO, COMMIT, tmp_path / "cache", allow_patterns=SD_ALLOW, ignore_patterns=SD_IGNORE,
                    endpoint=hub.url) == folder
    assert len(hub.log) == before


@pytest.mark.parametrize("path", ["unet/diffusion_pytorch_model.safetensors", "unet/config.json"])
def test_verify_snapshot_detects_a_tampered_blob(hub, tmp_path, path):
    folder = snapshot(REPO, COMMIT, tmp_path / "cache", allow_patterns=SD_ALLOW, ignore_patterns=SD_IGNORE,
                      endpoint=hub.url)
    blob = (folder / path).resolve()
    blob.chmod(0o644)
    blob.write_bytes(FILES[path] + b"!")
    with pytest.raises(ChecksumError) as info:
        verify_snapshot(folder)
    assert path in str(info.value) and blob.name in str(info.value)


def test_verify_snapshot_follows_blobs_into_the_xet_shared_store(hub, tmp_path):
    # huggingface_hub >= 1.x may turn blobs/<etag> into a link to <cache>/blobs/<xx>/<xet hash>
    # (utils/_shared_blobs.py): the hash to check is the etag, not the store file's name.
    folder = snapshot(REPO, COMMIT, tmp_path / "cache", allow_patterns=SD_ALLOW, ignore_patterns=SD_IGNORE,
                      endpoint=hub.url)
    blob = (folder / "unet/diffusion_pytorch_model.safetensors").resolve()
    store = tmp_path / "cache" / "blobs" / "ab" / ("ab" + "0" * 62)
    store.parent.mkdir(parents=True)
    blob.rename(store)
    blob.symlink_to(store)
    assert all(f["verified"] for f in verify_snapshot(folder))


def test_snapshot_requires_a_commit_hash(hub, tmp_path):
    for revision in ["main", COMMIT[:12], COMMIT.upper()]:
        with pytest.raises(ValueError, match="40-hex commit"):
            snapshot(REPO, revision, tmp_path / "cache", endpoint=hub.url)
    assert hub.log == []


def test_snapshot_refuses_patterns_matching_nothing(hub, tmp_path):
    with pytest.raises(ValueError, match="no files matched"):
        snapshot(REPO, COMMIT, tmp_path / "cache", allow_patterns=["*.onnx"], endpoint=hub.url)


def test_a_gated_repository_says_how_to_use_your_own_token(hub, tmp_path):
    # The Hub answers 401 with X-Error-Code: GatedRepo when the account has not accepted the licence
    hub.add(f"/api/models/gated/model/tree/{COMMIT}", b'{"error": "gated"}', status=401,
            headers={"X-Error-Code": "GatedRepo", "Content-Type": "application/json"})
    with pytest.raises(PermissionError, match="gated") as info:
        snapshot("gated/model", COMMIT, tmp_path / "cache", allow_patterns=SD_ALLOW, endpoint=hub.url)
    assert "hf auth login" in str(info.value) and "HF_TOKEN" in str(info.value)
    assert "https://huggingface.co/gated/model" in str(info.value)


def test_the_users_token_is_sent_to_the_hub_and_stored_nowhere(hub, tmp_path, monkeypatch):
    token = "hf_" + "x" * 34
    monkeypatch.setenv("HF_TOKEN", token)
    folder = snapshot(REPO, COMMIT, tmp_path / "cache", allow_patterns=SD_ALLOW, ignore_patterns=SD_IGNORE,
                      endpoint=hub.url)
    api = [r for r in hub.log if r.path.startswith("/api/") or "/resolve/" in r.path]
    assert api and all(r.headers.get("authorization") == f"Bearer {token}" for r in api)
    write_weights_manifest(folder, tmp_path / "manifest.json")
    stored = [p for p in tmp_path.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert stored == []

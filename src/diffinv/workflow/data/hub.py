"""Model weights (Stable Diffusion, SDXL, SD3, FLUX.1) from the Hugging Face Hub at a pinned commit, and
their verification.

Cache layout (https://huggingface.co/docs/huggingface_hub/guides/manage-cache):
``models--<org>--<name>/{blobs,refs,snapshots}``; ``snapshots/<commit>/<path>`` are symlinks to
``blobs/<etag>``, and the ETag of a file is "its git-sha1 if stored in git, or its sha256 if stored
in git-lfs" (docstring of ``huggingface_hub.file_download.hf_hub_url``). huggingface_hub only
checks a plain-HTTP download's size, so :func:`verify_snapshot` re-hashes every file against its
blob name.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..download import ChecksumError, atomic_write_text
from ...digest import file_digests

# What diffinv loads: configs, tokenizer files (CLIP's vocab/merges, T5's tokenizer.json and
# spiece.model) and the full-precision safetensors of each component folder (unet or transformer, vae,
# text encoders; sharded ones with their index). fp16 variants, pickled (.bin/.ckpt), Flax and ONNX
# weights are skipped, and so is the safety checker: the backends load the components one by one and
# never build it (a diffusers StableDiffusionPipeline would need `safety_checker=None` passed
# explicitly). Single-file checkpoints at a repository's top level (SDXL's sd_xl_base_1.0.safetensors,
# FLUX.1-dev's flux1-dev.safetensors and ae.safetensors) and the copies for other tools (SDXL's
# vae_1_0/, SD3.5's text_encoders/) duplicate the component folders and are skipped. A pixel-space
# UNet2DModel (model.kind pixel) may instead have its weights at the top level, as the public DDPM
# repositories (google/ddpm-*) do beside config.json and scheduler_config.json: the one top-level name
# allowed, which no latent-diffusion repository uses.
SD_ALLOW = ["*.json", "*.txt", "*/*.safetensors", "*/spiece.model", "diffusion_pytorch_model*.safetensors"]
SD_IGNORE = ["*.fp16.*", "*.fp16-*", "*.ckpt", "*.bin", "*.msgpack", "*.onnx*", "safety_checker/*", "vae_1_0/*",
             "text_encoders/*"]

_HEX40 = re.compile(r"[0-9a-f]{40}")  # commit hashes and git blob SHA-1s
_HEX64 = re.compile(r"[0-9a-f]{64}")


def snapshot(repo_id: str, revision: str, cache_dir: str | os.PathLike, *, allow_patterns: list[str] | None = None,
             ignore_patterns: list[str] | None = None, endpoint: str | None = None) -> Path:
    """Download ``repo_id`` at commit ``revision`` into the Hub cache under ``cache_dir`` with
    ``huggingface_hub.snapshot_download``; return the ``snapshots/<revision>`` folder.

    ``revision`` must be a full 40-hex commit: branch names move. With a commit, snapshot_download
    skips the repo-info call and lists the files with the tree API at that commit.
    """
    if not _HEX40.fullmatch(revision):
        raise ValueError(f"{repo_id}: revision must be a full 40-hex commit hash, got {revision!r}")
    from huggingface_hub import snapshot_download  # heavy import, only when downloading
    from huggingface_hub.errors import GatedRepoError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                        allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
                                        endpoint=endpoint))
    except GatedRepoError as exc:
        raise PermissionError(
            f"{repo_id} is gated: accept its licence at https://huggingface.co/{repo_id} with your own account, "
            "then log in on this machine (`hf auth login`) or export HF_TOKEN for this shell; huggingface_hub "
            f"reads the token, diffinv never stores it ({exc.__class__.__name__}: {exc})") from exc
    # snapshot_download only logs a warning when the patterns match nothing.
    if not folder.is_dir() or not any(p.is_file() for p in folder.rglob("*")):
        raise ValueError(f"{repo_id}@{revision}: no files matched allow={allow_patterns} ignore={ignore_patterns}")
    return folder


def _hashes(path: Path) -> tuple[str, str]:
    """SHA-256 and git blob SHA-1 (``sha1(b"blob <size>\\0" + data)``) of a file in one pass."""
    digests = file_digests(path, ("sha256", "sha1"), prefix={"sha1": b"blob %d\0" % path.stat().st_size})
    return digests["sha256"], digests["sha1"]


def verify_snapshot(folder: str | os.PathLike) -> list[dict]:
    """Hash every file of a snapshot folder (following its symlinks) and check it against its blob name.

    The blob name is the ETag: 64 hex digits for an LFS file (its SHA-256), 40 for a git file (its
    git blob SHA-1). A mismatch raises :class:`ChecksumError`
    naming the file. Returns one ``{"path", "sha256", "size", "verified"}`` per file, sorted by path
    (``verified`` is False for a plain file without a blob name, e.g. a ``local_dir`` copy).
    """
    folder = Path(folder)
    files = []
    for dirpath, _, filenames in os.walk(folder):
        for filename in filenames:
            link = Path(dirpath, filename)
            # The name that carries the hash is the snapshot link's own target, blobs/<etag>; that blob
            # may itself link into the Xet shared store (blobs/<xx>/<xet hash>), so do not take the
            # name of the fully resolved path.
            name = Path(os.readlink(link)).name if link.is_symlink() else ""
            data = link.resolve(strict=True)
            sha256, git_sha1 = _hashes(data)
            verified = False
            if _HEX64.fullmatch(name) or _HEX40.fullmatch(name):
                algorithm, actual = ("sha256", sha256) if len(name) == 64 else ("git blob sha1", git_sha1)
                if actual != name:
                    raise ChecksumError.mismatch(f"{link} (blob {name})", algorithm, name, actual)
                verified = True
            files.append({"path": link.relative_to(folder).as_posix(), "sha256": sha256,
                          "size": data.stat().st_size, "verified": verified})
    if not files:
        raise ValueError(f"{folder}: no files to verify")
    return sorted(files, key=lambda f: f["path"])


def write_weights_manifest(folder: str | os.PathLike, path: str | os.PathLike, *, repo_id: str | None = None,
                           revision: str | None = None) -> dict:
    """Verify ``folder`` and write ``{repo_id, revision, folder, files}`` as JSON (atomically).

    ``revision`` and ``repo_id`` default to what the cache layout says
    (``models--<org>--<name>/snapshots/<commit>``); ``repo_id`` is left out if it cannot be told.
    """
    folder = Path(folder)
    revision = revision or folder.name
    if not _HEX40.fullmatch(revision):
        raise ValueError(f"{folder}: pass the revision; the folder name is not a commit hash")
    repo = re.fullmatch(r"models--([^/]+?)--(.+)", folder.parent.parent.name)
    repo_id = repo_id or (f"{repo.group(1)}/{repo.group(2)}" if repo else None)
    manifest = {**({"repo_id": repo_id} if repo_id else {}), "revision": revision, "folder": str(folder),
                "files": verify_snapshot(folder)}
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return manifest

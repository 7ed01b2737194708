"""Captioned evaluation images: MS-COCO 2017 val and NOCAPS val.

Both ship a captions file in the COCO captions layout (https://cocodataset.org/#format-data, section
"Image Captioning"; NOCAPS: https://nocaps.org/download): ``images[]`` with ``id``, ``file_name``,
``coco_url``, ``width``, ``height`` (NOCAPS adds ``open_images_id``) and ``annotations[]`` with
``image_id`` and ``caption`` (about 5 per image for COCO, 10 for NOCAPS). A subset is chosen
deterministically, each image fetched on its own from its ``coco_url``, and the result written to a
manifest that lists ids explicitly (no directory-listing order, no re-encoding).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from ..download import ChecksumError, DownloadError, Lockfile, atomic_write_text, fetch
from ...digest import file_digest

MANIFEST_COLUMNS = ("id", "file", "url", "caption", "sha256", "status")
# An image id is a name, never a path: it names files (<id>.png) and rows. Letters, digits, "_", "-" and
# ".", starting with a letter or digit (so never "." or ".."), at most 128 characters.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _clean_caption(caption: str) -> str:
    # Some COCO captions end in "\n" or contain line breaks; a prompt is one line.
    return re.sub(r"\s*[\r\n]+\s*", " ", caption).strip()


def select_images(captions_json: str | os.PathLike, count: int, seed: int) -> list[dict]:
    """``count`` captioned images chosen by ``numpy.random.default_rng(seed)``, sorted by id.

    Candidates are the images with at least one non-blank caption, sorted by id; the choice is
    ``rng.choice(n, count, replace=False)``, so the result depends only on the file, ``seed`` and
    ``count``. Each row has ``id`` (str), ``file_name``, ``url`` (the ``coco_url``) and ``caption``:
    the image's first caption in annotation-file order, stripped, line breaks turned into spaces.
    """
    path = Path(captions_json)
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        raise ValueError(f"{path}: not a COCO captions file (needs 'images' and 'annotations')")
    images: dict[int, dict] = {}
    for image in data["images"]:
        if image["id"] in images:
            raise ValueError(f"{path}: duplicate image id {image['id']}")
        images[image["id"]] = image
    first: dict[int, str] = {}
    for ann in data["annotations"]:
        if ann["image_id"] not in images:
            raise ValueError(f"{path}: annotation {ann.get('id')} refers to unknown image {ann['image_id']}")
        caption = _clean_caption(ann["caption"])
        if caption and ann["image_id"] not in first:
            first[ann["image_id"]] = caption
    ids = sorted(first)
    if count > len(ids):
        raise ValueError(f"{path}: asked for {count} images but only {len(ids)} have captions")
    chosen = sorted(ids[i] for i in np.random.default_rng(seed).choice(len(ids), count, replace=False))
    return [{"id": str(i), "file_name": images[i]["file_name"], "url": images[i]["coco_url"], "caption": first[i]}
            for i in chosen]


def _is_inside(relative: str) -> bool:
    """True for a non-empty relative path without ``..``: it cannot leave the folder it is joined to."""
    posix = PurePosixPath(relative.replace("\\", "/"))
    return bool(relative) and not posix.is_absolute() and ".." not in posix.parts \
        and not PureWindowsPath(relative).drive


def inside(folder: str | os.PathLike, relative: str) -> Path:
    """``folder / relative``, refused (ValueError naming both) unless it stays inside ``folder`` once
    resolved: every file the workflow reads or writes by a manifest's name goes through here."""
    path = Path(folder) / relative
    if not _is_inside(relative) or not path.resolve().is_relative_to(Path(folder).resolve()):
        raise ValueError(f"{relative!r} would leave the folder {folder}")
    return path


def write_manifest(rows: Iterable[dict], path: str | os.PathLike, *, extra: Sequence[str] = ()) -> None:
    """Write rows with exactly :data:`MANIFEST_COLUMNS`, then the ``extra`` columns (e.g. the photos
    manifest's ``crop``), as UTF-8 CSV (LF line ends), atomically."""
    columns = (*MANIFEST_COLUMNS, *extra)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for n, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"{path}: row {n} (id {row.get('id')!r}) lacks columns {missing}")
        writer.writerow(row)
    atomic_write_text(path, out.getvalue())


def read_manifest(path: str | os.PathLike, *, strict: bool = True) -> list[dict]:
    """Read a manifest written by :func:`write_manifest`, checking its columns, that ids are
    names (:data:`ID_PATTERN`) and unique, that every ``file`` stays inside the data folder (relative,
    no ``..``) and that the text is UTF-8. An empty caption is kept as ``""``: whether that is acceptable is the
    caller's decision.

    A bad row raises, naming the file and line; with ``strict=False`` it is kept instead, its reason
    in ``manifest_error``, so that a shard can make it one error row and go on. Missing columns always
    raise: then no row can be trusted.
    """
    path = Path(path)
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")  # a bad byte spoils one row
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f"{path}: manifest lacks columns {missing}")
    rows, seen = [], {}
    for row in reader:
        where = f"{path}, line {reader.line_num}"
        extra = row.pop(None, None)  # DictReader's key for fields beyond the header
        values = {k: v or "" for k, v in row.items()}
        if extra is not None:
            problem = "more fields than the header"
        elif any(_undecodable(v) for v in values.values()):
            problem = "not valid UTF-8"
        elif not values["id"]:
            problem = "empty id"
        elif not ID_PATTERN.fullmatch(values["id"]):
            problem = (f"id {values['id']!r} is not a name: use letters, digits, '_', '-' and '.', starting with a "
                       "letter or digit, at most 128 characters (ids name files)")
        elif values["id"] in seen:
            problem = f"duplicate id {values['id']!r} (first on line {seen[values['id']]})"
        elif not _is_inside(values["file"]):
            problem = f"file {values['file']!r} must be a relative path inside the data folder"
        else:
            seen[values["id"]] = reader.line_num
            rows.append(values)
            continue
        if strict:
            raise ValueError(f"{where}: {problem}")
        clean = {k: v.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
                 for k, v in values.items()}
        rows.append(clean | {"manifest_error": f"{where}: {problem}"})
    return rows


def _link(source: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``source`` (a copy where links cannot be made), replacing any old file."""
    import shutil

    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def _undecodable(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def fetch_images(rows: Iterable[dict], folder: str | os.PathLike, lock: Lockfile, *, retries: int = 3,
                 timeout: float = 60.0, cache: str | os.PathLike | None = None) -> list[dict]:
    """Download each row's ``url`` to ``folder/<file_name>`` and return manifest rows.

    With ``cache``, the download goes to ``cache/<file_name>`` (a store shared by every preset, which
    only ever adds verified files) and ``folder`` gets a hard link to it (a copy across file systems),
    so a preset's images are its own and another preset's acquisition never removes them.

    Digests are trusted on first use: a file's SHA-256 is recorded in ``lock`` (keyed by
    ``file_name``) and every later download must match, otherwise :class:`ChecksumError` stops the run.
    A file already on disk that matches the lock is not fetched again. A :class:`DownloadError`
    (e.g. HTTP 404) only marks its row ``"error: <reason>"`` so one dead URL does not stop a
    1,000-image set. The lock is saved at the end, and also when an exception propagates.
    """
    folder = Path(folder)
    out = []
    try:
        for row in rows:
            name = row["file_name"]
            if not _is_inside(name):
                raise ValueError(f"image {row['id']}: file_name {name!r} would leave {folder}")
            result = {"id": row["id"], "file": name, "url": row["url"], "caption": row["caption"], "sha256": ""}
            expected = lock.expected(name)
            try:
                dest = fetch(row["url"], inside(cache or folder, name), sha256=expected, retries=retries,
                             timeout=timeout)
            except ChecksumError as exc:
                if expected is None:
                    raise
                raise ChecksumError(f"{exc}; expected digest from entry {name!r} of lock file {lock.path}",
                                    algorithm=exc.algorithm, expected=exc.expected, actual=exc.actual) from exc
            except DownloadError as exc:
                out.append(result | {"status": f"error: {exc}"})
                continue
            digest = expected or file_digest(dest)  # fetch already verified `expected`
            lock.check_or_record(name, digest)
            if cache is not None:
                _link(dest, inside(folder, name))
            out.append(result | {"sha256": digest, "status": "ok"})
    finally:
        lock.save()
    return out

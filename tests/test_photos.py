"""The demo's evaluation manifest (data/manifests/photos.csv): packaged held-out photographs, whole and
as crops, reproducible from the installed files and disjoint from the photographs the model is fitted to."""

from __future__ import annotations

import functools
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffinv.workflow.data.captions import read_manifest
from diffinv.workflow.data.photos import (DEMO_EVAL, DEMO_FIT, MIN_SPREAD, PHOTO_COLUMNS, centre_box, crop, export_photos,
                                 load_photo, package_file, parse_box, photo_path, photo_url, spread,
                                 write_eval_manifest)
from diffinv.workflow.download import ChecksumError
from diffinv.digest import file_digest
from diffinv.evaluation.images import load_image

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "data" / "manifests" / "photos.csv"
BLOCK = 8


@functools.cache
def digest(url: str) -> str:
    return file_digest(package_file(url))


@functools.cache
def source(url: str) -> np.ndarray:
    """A packaged photo's pixels as the exporter crops them (RGB, full resolution)."""
    return load_image(package_file(url))


def fit_set() -> set[str]:
    """The photos the demo fits its model to: the library's default and the configured ones."""
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    return set(DEMO_FIT) | set(config["model"]["fit"]["photos"])


def is_whole(row: dict) -> bool:
    height, width = source(row["url"]).shape[:2]
    return parse_box(row["crop"]) == centre_box(width, height)


@pytest.fixture(scope="module")
def rows():
    return read_manifest(MANIFEST)


def test_manifest_has_at_least_32_items_with_source_sha256_and_crop_box(rows):
    assert len(rows) >= 32
    assert MANIFEST.read_text().splitlines()[0].endswith("," + ",".join(PHOTO_COLUMNS))
    for row in rows:
        assert row["status"] == "ok" and row["caption"].strip() and row["file"] == f"{row['id']}.png", row
        assert row["sha256"] == digest(row["url"]), row["id"]
        height, width = source(row["url"]).shape[:2]
        x0, y0, x1, y1 = parse_box(row["crop"])
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and x1 - x0 == y1 - y0, row["id"]
    # every held-out photograph at more than one scale: whole, and crops of two finer sizes
    for name in DEMO_EVAL:
        sides = {parse_box(r["crop"])[2] - parse_box(r["crop"])[0] for r in rows if r["url"] == photo_url(name)}
        assert len(sides) >= 3, (name, sides)
    # the first rows, which the qualitative figures and error statistics use, are the whole photographs
    assert [r["id"] for r in rows[:len(DEMO_EVAL)]] == list(DEMO_EVAL) and all(map(is_whole, rows[:4]))


def test_regenerating_the_manifest_gives_the_committed_file(tmp_path):
    write_eval_manifest(tmp_path / "photos.csv")
    assert (tmp_path / "photos.csv").read_bytes() == MANIFEST.read_bytes(), \
        "data/manifests/photos.csv is not what `python -m diffinv.workflow.data.photo_manifest` writes"


def test_no_evaluation_image_comes_from_a_fit_photo_file(rows):
    fit = fit_set()
    assert not fit & set(DEMO_EVAL)
    fit_urls = {photo_url(name) for name in fit}
    fit_digests = {digest(url) for url in fit_urls}
    for row in rows:
        assert row["url"] not in fit_urls, row["id"]
        assert row["sha256"] not in fit_digests and digest(row["url"]) not in fit_digests, row["id"]


def _window_hashes(image: np.ndarray) -> np.ndarray:
    """A 64-bit hash of every BLOCK x BLOCK window (all offsets) of a uint8 (H, W, 3) image: equal
    windows hash equal (the weights are separable, so it costs 2 * BLOCK passes, not BLOCK**2 * 3)."""
    rng = np.random.default_rng(0)
    channel, across, down = (rng.integers(1, 2**63, size=n, dtype=np.uint64) | np.uint64(1)
                             for n in (3, BLOCK, BLOCK))
    pixels = image.astype(np.uint64)
    flat = (pixels * channel).sum(axis=2, dtype=np.uint64)  # wraps modulo 2**64
    h, w = flat.shape
    across_sums = sum((flat[:, dx:w - BLOCK + 1 + dx] * across[dx] for dx in range(BLOCK)),
                      np.zeros((h, w - BLOCK + 1), np.uint64))
    return sum((across_sums[dy:h - BLOCK + 1 + dy] * down[dy] for dy in range(BLOCK)),
               np.zeros((h - BLOCK + 1, w - BLOCK + 1), np.uint64))


def test_no_evaluation_image_shares_pixels_with_a_fit_photo(rows):
    """Every 8 x 8 tile (on its 8-px grid) of every fit photograph, looked for at every offset of every
    evaluation source: so no region of 15 x 15 px or more is shared. Featureless tiles (values spanning
    fewer than 8 grey levels, e.g. black sky or border) are left out: they match by chance."""
    tiles: dict[int, list[np.ndarray]] = {}
    for name in sorted(fit_set()):
        image = load_image(photo_path(name))
        hashes = _window_hashes(image)
        for y in range(0, hashes.shape[0], BLOCK):
            for x in range(0, hashes.shape[1], BLOCK):
                tile = image[y:y + BLOCK, x:x + BLOCK]
                if int(tile.max()) - int(tile.min()) >= 8:
                    tiles.setdefault(int(hashes[y, x]), []).append(tile)
    assert len(tiles) > 30_000  # the check is not vacuous
    keys = np.array(sorted(tiles), dtype=np.uint64)

    def shared(image: np.ndarray) -> list[tuple[int, int]]:
        hashes = _window_hashes(image)
        return [(int(x), int(y)) for y, x in zip(*np.nonzero(np.isin(hashes, keys)))
                if any(np.array_equal(image[y:y + BLOCK, x:x + BLOCK], t) for t in tiles[int(hashes[y, x])])]

    for url in sorted({r["url"] for r in rows}):
        assert not shared(source(url)), f"{url} shares 8x8 blocks with a fit photo at (x, y) {shared(source(url))[:5]}"
    # the check finds a 15 x 15 px patch of a fit photograph pasted at an odd place
    pasted = source(photo_url("cat")).copy()
    pasted[101:116, 203:218] = load_image(photo_path("astronaut"))[250:265, 253:268]
    assert shared(pasted) == [(206, 107)]  # the one whole 8-px grid tile of the astronaut inside it


def test_crops_of_one_photo_do_not_overlap_and_none_is_flat(rows):
    by_source: dict[str, list[tuple[int, int, int, int]]] = {}
    for row in rows:
        if not is_whole(row):
            box = parse_box(row["crop"])
            by_source.setdefault(row["url"], []).append(box)
            assert spread(crop(source(row["url"]), box)) >= MIN_SPREAD, row["id"]
    assert set(by_source) == {photo_url(name) for name in DEMO_EVAL}
    for url, boxes in by_source.items():
        for a, b in combinations(boxes, 2):
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (url, a, b)
    # the rule rejects the retina's black border
    assert spread(crop(source(photo_url("retina")), (0, 0, 64, 64))) < MIN_SPREAD


def test_export_writes_the_crop_and_a_whole_item_is_what_the_loader_always_gave(rows, tmp_path):
    whole = rows[0]
    small = next(r for r in rows if parse_box(r["crop"])[2] - parse_box(r["crop"])[0] == 64)
    out = export_photos([whole, small], tmp_path)
    assert [r["crop"] for r in out] == [whole["crop"], small["crop"]]
    assert np.array_equal(load_image(tmp_path / whole["file"], size=64), load_photo(whole["id"], 64))
    pixels = load_image(tmp_path / small["file"])
    assert np.array_equal(pixels, crop(source(small["url"]), parse_box(small["crop"])))
    assert np.array_equal(load_image(tmp_path / small["file"], size=64), pixels)  # 64 px: native resolution
    with pytest.raises(ChecksumError, match=small["id"]):
        export_photos([{**small, "sha256": "0" * 64}], tmp_path)
    with pytest.raises(ValueError, match="not inside"):
        export_photos([{**small, "crop": "400 0 464 64"}], tmp_path)  # chelsea.png is 451 px wide
    with pytest.raises(ValueError, match="not square"):
        export_photos([{**small, "crop": "0 0 64 32"}], tmp_path)

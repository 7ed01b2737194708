"""Bad input, image by image: each unusable file or manifest row is one error row naming the file and
the reason, usable oddities (grey, alpha, CMYK, 16-bit, EXIF rotation) are converted, the shard completes."""

import io

import numpy as np
import pytest
from PIL import Image

from diffinv.evaluation import images as images_module
from diffinv.api import Run
from diffinv.workflow.data.captions import MANIFEST_COLUMNS, read_manifest
from diffinv.evaluation.images import load_image
from diffinv.testing import shard_rows
from test_runs import patch_model

RESOLUTION = 16


def photo(seed=0, size=(24, 20)):
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def png_bytes(image):
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes(image):
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def exif_rotated():
    """20 x 10 stored, left half red; EXIF orientation 6 says: display rotated 90 degrees clockwise."""
    stored = np.zeros((10, 20, 3), dtype=np.uint8)
    stored[:, :10] = (255, 0, 0)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, format="PNG", exif=exif.tobytes())
    return out.getvalue()


FILES = {
    "grey.png": lambda: png_bytes(Image.fromarray(photo()[..., 0], "L")),
    "grey16.png": lambda: png_bytes(Image.fromarray(np.full((20, 24), 32896, dtype=np.uint16))),
    "rgba.png": lambda: png_bytes(Image.fromarray(np.dstack([photo(), np.full((20, 24), 0, np.uint8)]), "RGBA")),
    "cmyk.jpg": lambda: jpeg_bytes(Image.fromarray(photo()).convert("CMYK")),
    "rotated.png": exif_rotated,
    "small.png": lambda: png_bytes(Image.fromarray(photo(size=(9, 12)))),  # >= 16 // 2: a mild upscale
    "tiny.png": lambda: png_bytes(Image.fromarray(photo(size=(6, 5)))),
    "huge.png": lambda: png_bytes(Image.fromarray(photo(size=(300, 200)))),
    "truncated.png": lambda: png_bytes(Image.fromarray(photo(size=(64, 64))))[:400],
    "truncated.jpg": lambda: jpeg_bytes(Image.fromarray(photo(size=(64, 64))))[:300],
    "noise.jpg": lambda: b"\xff\xd8\xff\xe0 this is not a JPEG",
    "empty.png": lambda: b"",
    "good.png": lambda: png_bytes(Image.fromarray(photo(1))),
}


def manifest_line(image_id, file, caption="a photo", status="ok"):
    return f"{image_id},{file},https://example.invalid/{file},{caption},0,{status}\n".encode()


@pytest.fixture
def shard(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, make in FILES.items():
        (folder / name).write_bytes(make())
    (tmp_path / "secret.png").write_bytes(FILES["good.png"]())
    monkeypatch.setattr(images_module, "MAX_PIXELS", 200 * 200)  # huge.png (300 x 200) is over the limit
    lines = [",".join(MANIFEST_COLUMNS).encode() + b"\n"]
    lines += [manifest_line(name.replace(".", "_"), name) for name in FILES]
    lines += [manifest_line("good_png", "good.png"),  # a duplicate id
              manifest_line("escape", "../secret.png"),  # leaves the data folder
              manifest_line("absolute", str(tmp_path / "secret.png")),
              manifest_line("latin1", "good.png", caption="caf\xe9".encode("latin-1").decode("latin-1")),
              manifest_line("nocaption", "good.png", caption=""),
              manifest_line("gone", "gone.png", status="error: HTTP 404")]
    # one caption with a Latin-1 byte, as a hand-edited file might have
    lines[-3] = b"latin1,good.png,https://example.invalid/x,caf\xe9,0,ok\n"
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"".join(lines))
    items = [{**row, "index": i} for i, row in enumerate(read_manifest(path, strict=False))]
    return folder, items


def test_every_bad_input_is_one_error_row_naming_file_and_reason(shard):
    folder, items = shard
    rows = shard_rows(patch_model(), Run("ddim", num_steps=5), items, images_dir=folder,
                     resolution=RESOLUTION, dataset="t")
    assert [r["id"] for r in rows] == [i["id"] for i in items]  # the shard completed, in order
    first = {}
    for row in rows:
        first.setdefault(row["id"], row["status"])
    for ok in ("grey_png", "grey16_png", "rgba_png", "cmyk_jpg", "rotated_png", "small_png", "good_png"):
        assert first[ok] == "ok", (ok, first[ok])
    expected = {
        "tiny_png": ["tiny.png", "too small", "below 8 px"],
        "huge_png": ["huge.png", "300x200", "larger than the limit of 40000 pixels"],
        "truncated_png": ["truncated.png", "cannot read image"],
        "truncated_jpg": ["truncated.jpg", "cannot read image"],
        "noise_jpg": ["noise.jpg", "cannot read image"],
        "empty_png": ["empty.png", "cannot read image"],
        "escape": ["line 16", "'../secret.png' must be a relative path inside the data folder"],
        "absolute": ["line 17", "must be a relative path"],
        "latin1": ["line 18", "not valid UTF-8"],
        "nocaption": ["empty caption"],
        "gone": ["not acquired (error: HTTP 404)"],
    }
    for image_id, parts in expected.items():
        assert first[image_id].startswith("error: "), image_id
        assert all(p in first[image_id] for p in parts), (image_id, first[image_id])
    assert rows[13]["id"] == "good_png" and rows[13]["status"] == (
        f"error: bad manifest row ({folder.parent / 'manifest.csv'}, line 15: duplicate id 'good_png' "
        "(first on line 14)); not read")
    assert sum(r["status"] == "ok" for r in rows) == 7


def test_conversions_keep_what_the_file_means(shard):
    folder, _ = shard
    grey16 = load_image(folder / "grey16.png")
    assert grey16.dtype == np.uint8 and (grey16 == 128).all()  # 32896 / 257, scaled, not clipped to 255
    assert (load_image(folder / "rgba.png") == 255).all()  # fully transparent: white, not the hidden colour
    rotated = load_image(folder / "rotated.png")
    assert rotated.shape == (20, 10, 3)  # displayed upright: taller than wide
    assert tuple(rotated[0, 5]) == (255, 0, 0) and tuple(rotated[-1, 5]) == (0, 0, 0)
    grey = load_image(folder / "grey.png")
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    cmyk = load_image(folder / "cmyk.jpg").astype(int)
    assert np.abs(cmyk - photo()).mean() < 40  # CMYK round trip through JPEG: close to the RGB it came from


def test_a_strict_manifest_read_still_refuses_bad_rows(shard, tmp_path):
    with pytest.raises(ValueError, match=r"line 15: duplicate id 'good_png'"):
        read_manifest(tmp_path / "manifest.csv")


def test_an_id_that_is_a_path_is_one_error_row_and_writes_nothing_outside(tmp_path):
    """Ids name files (<id>.png): one that is not a name is refused as a manifest row, so no reconstruction,
    checkpoint or latent of it is written anywhere, inside or outside the results."""
    work = tmp_path / "a" / "b"
    folder = work / "images"
    folder.mkdir(parents=True)
    (folder / "good.png").write_bytes(FILES["good.png"]())
    path = work / "manifest.csv"
    path.write_bytes(b"".join([",".join(MANIFEST_COLUMNS).encode() + b"\n", manifest_line("ok", "good.png"),
                               manifest_line("../../x", "good.png"), manifest_line("sub/y", "good.png"),
                               manifest_line(".hidden", "good.png")]))
    with pytest.raises(ValueError, match=r"line 3: id '\.\./\.\./x' is not a name"):
        read_manifest(path)
    items = [{**row, "index": i} for i, row in enumerate(read_manifest(path, strict=False))]
    before = {p for p in tmp_path.rglob("*")}
    rows = shard_rows(patch_model(), Run("ddim", num_steps=3), items, images_dir=folder,
                      resolution=RESOLUTION, dataset="t", qualitative=10, save_latents=True,
                      recon_dir=work / "recon", checkpoint=work / "partial")
    assert [r["status"] == "ok" for r in rows] == [True, False, False, False]
    assert all("is not a name" in r["status"] for r in rows[1:])
    made = {p.relative_to(work).as_posix() for p in tmp_path.rglob("*") if p not in before and p.is_file()}
    assert made == {"recon/ok.png", "recon/ok.safetensors", *(f"partial/{k:06d}.json" for k in range(4)),
                    "partial/ok.png", "partial/ok.safetensors"}

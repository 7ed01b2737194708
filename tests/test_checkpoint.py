"""A shard killed with SIGKILL halfway resumes from its checkpoint: finished images are not recomputed
and the rows and saved reconstructions equal those of an uninterrupted run (batches of 2, checked
against an uninterrupted run at batch size 1)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffinv.api import Run
from diffinv.models import GaussianMixtureDenoiser
from diffinv.testing import shard_rows

RUN = Run("ife", num_steps=6)
IMAGES = 6
MEASURED = {"seconds_inversion", "seconds_reconstruction", "peak_mem_mb", "batch_size", "batch_id"}  # timings


class SlowModel(GaussianMixtureDenoiser):
    """The test's patch model, slowed so that the parent can kill it between images."""

    def forward(self, z, timestep, embedding):
        time.sleep(float(os.environ.get("DIFFINV_TEST_SLEEP", "0")))
        return super().forward(z, timestep, embedding)


def model(dtype=torch.float64) -> SlowModel:
    rng = np.random.default_rng(0)
    return SlowModel(np.ones(3) / 3, rng.normal(0, 0.3, (3, 48)), np.full(3, 0.05), patch_size=4, dtype=dtype)


def items(folder: Path) -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    for k in range(IMAGES):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{k}.png")
        out.append({"index": k, "id": f"im{k}", "file": f"{k}.png", "caption": "x", "status": "ok"})
    return out


def shard(folder: Path, checkpoint: Path | None, recon: Path, m=None, batch_size: int = 2, manifest=None) -> list[dict]:
    return shard_rows(m or model(), RUN, manifest or items(folder), images_dir=folder, resolution=16, dataset="t",
                      qualitative=5, recon_dir=recon, checkpoint=checkpoint, batch_size=batch_size)


def child(folder: str, checkpoint: str, recon: str) -> None:
    shard(Path(folder), Path(checkpoint), Path(recon))


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in rows]


def test_sigkill_halfway_then_resume_equals_an_uninterrupted_run(tmp_path):
    folder, checkpoint = tmp_path / "images", tmp_path / "partial"
    folder.mkdir()
    code = (f"import sys; sys.path[:0] = {[str(Path(__file__).parent)]!r}; import test_checkpoint as t; "
            f"t.child({str(folder)!r}, {str(checkpoint)!r}, {str(tmp_path / 'killed')!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "DIFFINV_TEST_SLEEP": "0.02"})
    deadline = time.monotonic() + 120
    while len(list(checkpoint.glob("*.json"))) < 2:
        assert proc.poll() is None, "the child finished or failed before it could be killed"
        assert time.monotonic() < deadline, "no image finished in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    finished = len(list(checkpoint.glob("*.json")))
    assert 2 <= finished < IMAGES

    resumed_model = model()
    resumed = shard(folder, checkpoint, tmp_path / "resumed", resumed_model)
    per_image = resumed[-1]["nfe_inversion"] + resumed[-1]["nfe_reconstruction"]
    batches = -(-(IMAGES - finished) // 2)
    assert resumed_model.nfe == batches * per_image + 1  # + the warm-up call: nothing redone

    uninterrupted = shard(folder, None, tmp_path / "straight", batch_size=1)
    assert comparable(resumed) == comparable(uninterrupted)
    assert all(r["status"] == "ok" for r in resumed)
    for name in ("im0.png", "im4.png"):  # im0 was finished before the kill, im4 after
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()


def test_a_checkpoint_of_other_settings_is_not_reused(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shard(folder, tmp_path / "partial", tmp_path / "a")
    other = Run("ife", num_steps=4)
    m = model()
    rows = shard_rows(m, other, items(folder), images_dir=folder, resolution=16, dataset="t",
                     checkpoint=tmp_path / "partial")
    assert all(r["num_steps"] == 4 for r in rows) and m.nfe == IMAGES * 8 + 1


@pytest.mark.parametrize("change", ["dtype", "prompt", "code"])
def test_a_checkpoint_written_under_another_dtype_prompt_or_code_is_discarded(tmp_path, change):
    """Rows of an interrupted shard are reused only under the same settings and provenance."""
    folder, partial = tmp_path / "images", tmp_path / "partial"
    folder.mkdir()
    first = shard(folder, partial, tmp_path / "a")
    assert len(list(partial.glob("*.json"))) == IMAGES  # as a job killed after its last image leaves it
    m = model(torch.float32 if change == "dtype" else torch.float64)
    rows = shard_rows(m, RUN, items(folder), images_dir=folder, resolution=16, dataset="t", checkpoint=partial,
                      prompt="empty" if change == "prompt" else "caption", code="edited" if change == "code" else "")
    per_image = first[0]["nfe_inversion"] + first[0]["nfe_reconstruction"]
    assert m.nfe == IMAGES * per_image + 1  # every image recomputed
    assert all(r["dtype"] == ("float32" if change == "dtype" else "float64") for r in rows)
    assert all(r["code"] == ("edited" if change == "code" else "") for r in rows)
    # and the same settings again reuse every row
    again = model(m.dtype)
    shard_rows(again, RUN, items(folder), images_dir=folder, resolution=16, dataset="t", checkpoint=partial,
               prompt="empty" if change == "prompt" else "caption", code="edited" if change == "code" else "")
    assert again.nfe == 0


@pytest.mark.parametrize("change", ["image", "caption", "crop"])
def test_a_saved_row_is_reused_only_for_the_same_image_and_manifest_row(tmp_path, change):
    """The checkpoint's key covers each image's bytes and every field of its manifest row: change one
    image (or its caption, or its crop box) and that image alone is recomputed."""
    folder, partial = tmp_path / "images", tmp_path / "partial"
    folder.mkdir()
    shard(folder, partial, tmp_path / "a")
    changed = items(folder)
    if change == "image":
        Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(folder / "2.png")
    elif change == "caption":
        changed[2]["caption"] = "another caption"
    else:
        changed[2]["crop"] = "0 0 8 8"
    m = model()
    rows = shard(folder, partial, tmp_path / "b", m, manifest=changed)
    per_image = rows[0]["nfe_inversion"] + rows[0]["nfe_reconstruction"]
    assert m.nfe == per_image + 1  # image 2 only (+ the warm-up call)
    fresh = shard(folder, None, tmp_path / "c", manifest=changed)
    assert comparable(rows) == comparable(fresh)
    assert (tmp_path / "b" / "im2.png").read_bytes() == (tmp_path / "c" / "im2.png").read_bytes()


def test_an_unreadable_checkpoint_is_discarded_with_a_warning_naming_it(tmp_path, caplog):
    folder, partial = tmp_path / "images", tmp_path / "partial"
    folder.mkdir()
    shard(folder, partial, tmp_path / "a")
    (partial / "000001.json").write_text('{"key": "trunca')
    (partial / "000003.json").write_bytes(b"\xff\xfe not json")
    m = model()
    with caplog.at_level("WARNING", logger="diffinv.workflow.runs"):
        rows = shard(folder, partial, tmp_path / "b", m, batch_size=1)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and all("unreadable checkpoint" in w for w in warned)
    assert str(partial / "000001.json") in warned[0] and str(partial / "000003.json") in warned[1]
    per_image = rows[0]["nfe_inversion"] + rows[0]["nfe_reconstruction"]
    assert m.nfe == 2 * per_image + 1 and all(r["status"] == "ok" for r in rows)

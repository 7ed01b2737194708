"""The paper preset's rules, run by Snakemake against a local HTTP server.

COCO's annotations zip (pinned MD5), NOCAPS' captions JSON and the sampled images (trust on first
use), and a torchvision checkpoint (SHA-256 prefix in its name) are served from 127.0.0.1 as fixture
files made here; the workflow's own rules fetch, verify and select them.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from diffinv.testing import write_tiny_stable_diffusion
from fakehub import serve_repo
from httpserver import LocalServer, Route
from snakemake_runner import ROOT, snakemake


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def captions(server_url: str, folder: str, ids: list[int]) -> dict:
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "coco_url": f"{server_url}/{folder}/{i:012d}.jpg",
               "width": 64, "height": 48} for i in ids]
    annotations = [{"id": 100 * i + k, "image_id": i, "caption": f"image {i} caption {k}"} for i in ids for k in (1, 2)]
    return {"images": images, "annotations": annotations}


@pytest.fixture
def served(tmp_path):
    """A server holding COCO and NOCAPS fixtures, and a config pointing the paper preset at it."""
    with LocalServer() as server:
        coco = json.dumps(captions(server.url, "val2017", [1, 2, 3])).encode()
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("annotations/captions_val2017.json", coco)
            z.writestr("annotations/instances_val2017.json", b"{}")
        zip_bytes = archive.getvalue()
        server.add("/annotations/annotations_trainval2017.zip", zip_bytes)
        for i in (1, 2, 3):
            server.add(f"/val2017/{i:012d}.jpg", jpeg(i))
        server.add("/nocaps_val_4500_captions.json", json.dumps(captions(server.url, "nocaps/val", [7, 8, 9])).encode())
        for i in (7, 8):  # 9 is missing: a 404
            server.add(f"/nocaps/val/{i:012d}.jpg", jpeg(i))
        trunk = b"not really a checkpoint"
        trunk_name = f"alexnet-owt-{hashlib.sha256(trunk).hexdigest()[:8]}.pth"
        server.add(f"/models/{trunk_name}", trunk)

        config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
        config["preset"] = "acq"
        config["datasets"] = {"coco": {"source": "coco", "count": 2, "seed": 0},
                              "nocaps": {"source": "nocaps", "count": 3, "seed": 0}}
        config["metrics"] = {"lpips": ["alex"], "lpips_trunk": "torchvision"}
        config["sources"] = {
            "coco_annotations": {"url": f"{server.url}/annotations/annotations_trainval2017.zip",
                                 "md5": hashlib.md5(zip_bytes).hexdigest()},
            "nocaps_captions": {"url": f"{server.url}/nocaps_val_4500_captions.json"},
            "torchvision_alex": {"url": f"{server.url}/models/{trunk_name}"},
        }
        path = tmp_path / "acq.yaml"
        path.write_text(yaml.safe_dump(config))
        work = tmp_path / "work"
        work.mkdir()
        yield server, path, work, trunk_name, zip_bytes


def test_acquisition_rules_fetch_verify_and_record(served):
    server, config, work, trunk_name, _ = served
    trunk = f"data/downloads/torch/hub/checkpoints/{trunk_name}"
    snakemake("--cores", "1", "results/acq/data/coco.csv", "results/acq/data/nocaps.csv", trunk,
              "--configfile", str(config), cwd=work)

    coco = pd.read_csv(work / "results/acq/data/coco.csv", dtype=str)
    assert len(coco) == 2 and (coco["status"] == "ok").all()
    assert coco["caption"].str.endswith("caption 1").all()  # the first caption of each image
    for row in coco.itertuples():
        data = (work / "results/acq/data/coco/images" / row.file).read_bytes()  # the preset's own copy
        assert hashlib.sha256(data).hexdigest() == row.sha256
        assert (work / "data/downloads/coco/images" / row.file).read_bytes() == data  # and the shared store's
    nocaps = pd.read_csv(work / "results/acq/data/nocaps.csv", dtype=str).set_index("id")
    assert nocaps.loc["9", "status"].startswith("error:") and "404" in nocaps.loc["9", "status"]
    assert (nocaps.drop("9")["status"] == "ok").all()
    assert server.counts["/nocaps/val/000000000009.jpg"] == 1  # a 404 is not retried

    # trust on first use: every downloaded file's sha256 is recorded for later runs to verify
    locks = work / "data/manifests"
    assert len(pd.read_csv(locks / "coco.lock.csv")) == 2 and len(pd.read_csv(locks / "nocaps.lock.csv")) == 2
    assert (locks / "locks" / "nocaps_val_4500_captions.json.csv").is_file()
    assert (work / trunk).read_bytes() == b"not really a checkpoint"

    # a file that changed on the server after it was recorded stops the run, naming both sums
    (work / "results/acq/data/nocaps.csv").unlink()
    server.add("/nocaps/val/000000000007.jpg", jpeg(70))
    for image in (work / "data/downloads/nocaps/images").iterdir():
        image.unlink()
    out = snakemake("--cores", "1", "results/acq/data/nocaps.csv", "--configfile", str(config), cwd=work, check=False)
    log = (work / "logs/acq/acquire/nocaps.log").read_text() + out.stderr
    assert out.returncode != 0
    expected = pd.read_csv(locks / "nocaps.lock.csv").set_index("name")["sha256"]["000000000007.jpg"]
    assert expected in log and hashlib.sha256(jpeg(70)).hexdigest() in log


def test_corrupt_annotations_are_retried_then_fail_naming_both_sums(served):
    server, config, work, _, zip_bytes = served
    server.routes["/annotations/annotations_trainval2017.zip"] = Route(zip_bytes, corrupt=10)
    out = snakemake("--cores", "1", "data/downloads/coco/captions_val2017.json", "--configfile", str(config),
                    cwd=work, check=False)
    assert out.returncode != 0
    assert server.counts["/annotations/annotations_trainval2017.zip"] == 3
    log = (work / "logs/fetch_coco_captions.log").read_text() + out.stderr
    bad = bytes([zip_bytes[0] ^ 0xFF]) + zip_bytes[1:]
    assert hashlib.md5(zip_bytes).hexdigest() in log and hashlib.md5(bad).hexdigest() in log
    assert not (work / "data/downloads/coco/captions_val2017.json").exists()


def test_paper_preset_runs_end_to_end_on_a_tiny_random_model(served, tmp_path):
    """The paper DAG (weights from a fake Hub at a pinned commit, COCO + NOCAPS from the local server)
    on a random-weight tiny diffusers model on CPU: plumbing only, no number here means anything."""
    server, config_path, work, _, _ = served
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = write_tiny_stable_diffusion(tmp_path / "tiny")
    serve_repo(server, "test/tiny-sd", commit,
               {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()})
    config = yaml.safe_load(config_path.read_text())
    config["model"].update(repo_id="test/tiny-sd", revision=commit, device="cpu", dtype="float32", resolution=32)
    config["runs"] = {"ddim": {"method": "ddim"}, "ife": {"method": "ife"}}
    config["sweeps"] = []
    config["metrics"] = {"lpips": []}
    config["error_stats"] = {"runs": ["ife"], "images": 1, "tol": 1e-4, "max_iter": 5}
    config["shard_size"] = 2
    config["qualitative"] = 1
    config["report"] = {"images": 1, "qualitative_runs": ["ddim", "ife"]}  # no FPI/AIDI/ReNoise: Figure 4 says so
    config["sources"]["hf_endpoint"] = server.url
    config_path.write_text(yaml.safe_dump(config))

    snakemake("--cores", "2", "--configfile", str(config_path), cwd=work)
    rows = pd.read_csv(work / "results/acq/results.csv", dtype={"id": str})
    assert len(rows) == (2 + 3) * 2
    errors = rows[rows["status"] != "ok"]
    assert set(errors["id"]) == {"9"} and errors["status"].str.contains("not acquired").all()
    ok = rows[rows["status"] == "ok"]
    assert (ok["nfe_inversion"] == 50).all() and (ok["nfe_reconstruction"] == 50).all()
    assert ok["psnr_vae"].notna().all() and (ok["psnr"] != ok["psnr_vae"]).any()  # a real VAE round trip
    weights = json.loads(next((work / "data/weights").glob("test--tiny-sd-*.json")).read_text())
    assert weights["revision"] == commit and all(f["verified"] for f in weights["files"])
    assert not any(f["path"].endswith(".bin") for f in weights["files"])
    stats = pd.read_csv(work / "results/acq/error_stats.csv")
    assert len(stats) == 2 * 50  # one image per dataset, every step
    figures = sorted(p.name for p in (work / "figures/acq").iterdir())
    assert figures == sorted(f"{stem}.{ext}" for ext in ("png", "pdf") for stem in (
        "figure2_error_statistics", "figure3_qualitative_coco", "figure3_qualitative_nocaps",
        "figure4_iterations_coco", "figure4_iterations_nocaps", "quality_vs_cost"))
    assert "test/tiny-sd (float32)" in (work / "tables/acq/table1_reconstruction.md").read_text()


def test_a_stalled_download_is_retried_then_fails_and_leaves_nothing(served):
    server, config_path, work, _, _ = served
    config = yaml.safe_load(config_path.read_text())
    config["sources"]["nocaps_captions"]["timeout"] = 0.5
    config_path.write_text(yaml.safe_dump(config))
    route = server.routes["/nocaps_val_4500_captions.json"]
    server.routes["/nocaps_val_4500_captions.json"] = Route(route.body, stall=30)
    output = work / "data/downloads/nocaps/nocaps_val_4500_captions.json"
    out = snakemake("--cores", "1", str(output.relative_to(work)), "--configfile", str(config_path), cwd=work,
                    check=False)
    assert out.returncode != 0
    assert server.counts["/nocaps_val_4500_captions.json"] == 3
    assert "DownloadError" in out.stderr and "nocaps_val_4500_captions.json" in out.stderr
    assert not output.exists() and not list(output.parent.glob("*.part"))

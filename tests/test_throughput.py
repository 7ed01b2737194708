"""The SD throughput benchmark: SD v1.4's published architecture (on the meta device, no memory) and
the timing, FLOP counting, JSON merging and CLI on the tiny random model.

No timing is compared with a threshold: only how the figures relate to each other and where they go.
"""

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffinv.testing import write_tiny_stable_diffusion
from diffinv.workflow.throughput import device_name, lookup, read_results

REPOSITORY = Path(__file__).resolve().parents[1]
BENCHMARK = REPOSITORY / "benchmarks" / "sd_throughput.py"


def _benchmark():
    """benchmarks/sd_throughput.py as a module: the measurement lives there, only its lookup in the library."""
    spec = importlib.util.spec_from_file_location("sd_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _benchmark()
MODEL_TINY, add_entry, build_sd_v1_4, load_parts = bench.MODEL_TINY, bench.add_entry, bench.build_sd_v1_4, bench.load_parts
measure, new_results, resolution, unet_flops_per_pass = (bench.measure, bench.new_results, bench.resolution,
                                                         bench.unet_flops_per_pass)
write_results = bench.write_results
SECONDS = ("unet_seconds_per_call", "unet_seconds_per_pass", "vae_encode_seconds", "vae_decode_seconds",
           "text_encoder_seconds")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_tiny_stable_diffusion(tmp_path_factory.mktemp("throughput") / "tiny-sd")


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return load_parts(tiny_folder, torch.float32, "cpu")


@pytest.fixture(scope="module")
def tiny_flops(tiny):
    unet, _, text_encoder = tiny
    return unet_flops_per_pass(unet, text_encoder.config.max_position_embeddings)


def test_sd_v1_4_is_built_with_the_published_parameter_counts_and_sdpa_attention():
    # The counts of the published weights (UNet: diffusers' num_parameters example; VAE and CLIP ViT-L/14
    # text tower as loaded from the Hub): a wrong config value changes them.
    unet, vae, text_encoder = build_sd_v1_4(torch.bfloat16, "meta")
    counts = [sum(p.numel() for p in part.parameters()) for part in (unet, vae, text_encoder)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]
    assert all(p.dtype == torch.bfloat16 and p.device.type == "meta"
               for part in (unet, vae, text_encoder) for p in part.parameters())
    assert torch.get_default_dtype() == torch.float32  # building in bfloat16 left the default alone
    for part in (unet, vae):
        assert {type(p).__name__ for p in part.attn_processors.values()} == {"AttnProcessor2_0"}
    assert text_encoder.config._attn_implementation == "sdpa"
    assert (resolution(vae), unet.config.sample_size, text_encoder.config.max_position_embeddings) == (512, 64, 77)
    assert not any(part.training or any(p.requires_grad for p in part.parameters())
                   for part in (unet, vae, text_encoder))


def test_channels_last_reaches_the_weights(tiny_folder):
    unet, vae, text_encoder = load_parts(tiny_folder, torch.float32, "cpu", channels_last=True)
    for conv in (unet.conv_in, vae.encoder.conv_in, vae.decoder.conv_out):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert measure(unet, vae, text_encoder, 2, repeats=1)["channels_last"]


def test_unet_flops_count_the_attention_that_cpu_sdpa_runs(tiny, tiny_flops):
    # The math backend runs attention as matmuls, which PyTorch's counter always counts; the default
    # CPU kernel has no formula of its own in torch, so without ours the two would differ.
    unet, _, text_encoder = tiny
    with sdpa_kernel(SDPBackend.MATH):
        by_matmuls = unet_flops_per_pass(unet, text_encoder.config.max_position_embeddings)
    assert tiny_flops == by_matmuls > 0


@pytest.mark.parametrize("batch", [1, 3])
def test_a_measurement_is_an_entry_whose_pass_is_the_call_over_the_batch(tiny, tiny_flops, batch):
    entry = measure(*tiny, batch, repeats=2, flops_per_pass=tiny_flops)
    assert all(entry[key] > 0 for key in SECONDS)
    assert entry["unet_seconds_per_pass"] == entry["unet_seconds_per_call"] / batch
    assert entry["unet_tflops"] == pytest.approx(tiny_flops * batch / entry["unet_seconds_per_call"] / 1e12)
    assert (entry["repeats"], entry["warmup"], entry["channels_last"], entry["compile"]) == (2, 1, False, False)
    assert entry["torch"] == torch.__version__


def test_warmup_and_repeats_below_one_are_refused(tiny):
    with pytest.raises(ValueError, match="repeats"):
        measure(*tiny, 1, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        measure(*tiny, 1, repeats=1, warmup=0)


def test_the_cpu_device_name_is_the_model_and_thread_count_without_the_host():
    name = device_name("cpu")
    threads = torch.get_num_threads()
    assert name.endswith(f" ({threads} thread{'s' if threads != 1 else ''})")
    assert len(name) > len(f" ({threads} threads)")
    assert socket.gethostname() not in name


def entry(seconds: float) -> dict:
    return {"unet_seconds_per_call": seconds, "unet_seconds_per_pass": seconds}


def results(flops: int, *entries) -> dict:
    out = new_results(MODEL_TINY, 16, flops)
    for device, dtype, batch, e in entries:
        add_entry(out, device, dtype, batch, e)
    return out


def test_writing_merges_devices_dtypes_and_batches_and_replaces_only_the_same_entry(tmp_path):
    path = tmp_path / "r.json"
    write_results(path, results(100, ("GPU A", "float16", 1, entry(1.0)), ("GPU A", "float16", 8, entry(2.0))))
    write_results(path, results(100, ("CPU B (2 threads)", torch.float32, 2, entry(3.0)),
                                ("GPU A", torch.bfloat16, 1, entry(4.0)), ("GPU A", "float16", 1, entry(5.0))))
    held = read_results(path)
    assert held["devices"] == {
        "CPU B (2 threads)": {"float32": {"2": entry(3.0)}},
        "GPU A": {"float16": {"1": entry(5.0), "8": entry(2.0)}, "bfloat16": {"1": entry(4.0)}},
    }
    assert (held["model"], held["resolution"], held["unet_flops_per_pass"]) == (MODEL_TINY, 16, 100)
    assert lookup(path, "GPU A", torch.float16, 8) == entry(2.0)
    assert lookup(path, "CPU B (2 threads)", "float32", 2) == entry(3.0)
    assert lookup(path, "GPU A", "float32", 1) is None
    assert lookup(path, "GPU A", "float16", 4) is None
    assert lookup(path, "GPU C", "float16", 1) is None


def test_batches_are_written_in_numeric_order(tmp_path):
    path = tmp_path / "r.json"
    for batch in (16, 2, 1):
        write_results(path, results(100, ("GPU A", "float16", batch, entry(1.0))))
    assert list(read_results(path)["devices"]["GPU A"]["float16"]) == ["1", "2", "16"]


@pytest.mark.parametrize("other", [{"unet_flops_per_pass": 101}, {"model": "another"}, {"resolution": 32}])
def test_figures_of_another_model_are_not_mixed_into_a_file(tmp_path, other):
    path = tmp_path / "r.json"
    write_results(path, results(100, ("GPU A", "float16", 1, entry(1.0))))
    before = path.read_text()
    with pytest.raises(ValueError, match=next(iter(other))):
        write_results(path, {**results(100, ("GPU B", "float16", 1, entry(2.0))), **other})
    assert path.read_text() == before


def test_the_cli_adds_this_device_to_a_file_that_holds_another(tmp_path, tiny_flops):
    out = tmp_path / "results.json"
    other = {"unet_seconds_per_call": 0.5, "unet_seconds_per_pass": 0.5}
    write_results(out, results(tiny_flops, ("Borrowed GPU", "float16", 1, other)))
    run = subprocess.run([sys.executable, str(BENCHMARK), "--tiny", "--device", "cpu", "--dtypes", "float32",
                          "--batches", "1", "2", "--repeats", "1", "--out", str(out),
                          "--threads", str(torch.get_num_threads())],  # the device name holds the count
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    held = read_results(out)
    here = device_name("cpu")
    assert held["devices"]["Borrowed GPU"] == {"float16": {"1": other}}
    assert list(held["devices"][here]) == ["float32"]
    for batch in (1, 2):
        measured = lookup(out, here, "float32", batch)
        assert measured["unet_seconds_per_pass"] == measured["unet_seconds_per_call"] / batch
        assert measured["unet_tflops"] > 0
    assert held["unet_flops_per_pass"] == tiny_flops
    text = out.read_text()
    assert str(tmp_path) not in text and socket.gethostname() not in text
    rows = [line.split() for line in run.stdout.splitlines() if line.split()[:1] == ["float32"]]
    assert [r[1] for r in rows] == ["1", "2"]
    assert rows[0][4] == "1.00"  # batch 1's gain over itself


def test_an_out_of_memory_batch_is_reported_and_ends_the_sweep(tmp_path, monkeypatch, capsys):
    benchmark = _benchmark()
    measured = []

    def measure_until_four(unet, vae, text_encoder, batch, **kwargs):
        if batch >= 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        measured.append(batch)
        return measure(unet, vae, text_encoder, batch, **kwargs)

    monkeypatch.setattr(benchmark, "measure", measure_until_four)
    out = tmp_path / "r.json"
    benchmark.main(["--tiny", "--device", "cpu", "--dtypes", "float32", "--batches", "1", "2", "4", "8",
                    "--repeats", "1", "--out", str(out)])
    assert measured == [1, 2]
    assert "float32 batch 4: out of GPU memory" in capsys.readouterr().out
    assert list(read_results(out)["devices"][device_name("cpu")]["float32"]) == ["1", "2"]


def test_the_default_output_is_inside_the_repository():
    benchmark = _benchmark()
    assert not benchmark.DEFAULT_OUT.is_absolute()
    assert benchmark.parse_args([]).out == benchmark.DEFAULT_OUT


def test_the_checked_in_figures_are_sd_v1_4s_with_consistent_entries():
    path = REPOSITORY / "benchmarks" / "results" / "sd_throughput.json"
    if not path.exists():
        pytest.skip("no measured figures checked in yet")
    held = json.loads(path.read_text())
    unet, _, text_encoder = build_sd_v1_4(torch.float32, "meta")
    assert held["unet_flops_per_pass"] == unet_flops_per_pass(unet, text_encoder.config.max_position_embeddings)
    assert held["resolution"] == 512
    for dtypes in held["devices"].values():
        for batches in dtypes.values():
            for batch, e in batches.items():
                assert e["unet_seconds_per_pass"] == pytest.approx(e["unet_seconds_per_call"] / int(batch))

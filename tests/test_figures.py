"""The figures: readable PNG and PDF of plausible size, the same bytes when redrawn, honest annotations."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffinv.workflow import figures


def error_stats(rng):
    rows = []
    for run, method, scale in (("ife", "ife", 1e-4), ("ife_noerr", "ife_noerr", 1e-3), ("ddim", "ddim", 1e-2)):
        for image in range(3):
            for i in range(1, 11):
                rows.append({"dataset": "photos", "run": run, "method": method, "id": f"im{image}", "i": i,
                             "err_mean": rng.normal(0, scale), "err_var": scale ** 2 * rng.uniform(0.5, 2),
                             "converged": not (run == "ddim" and i == 10 and image == 0)})
    return pd.DataFrame(rows)


def check_files(paths, min_px=(300, 200)):
    with Image.open(paths["png"]) as im:
        im.verify()
    with Image.open(paths["png"]) as im:
        assert im.format == "PNG" and min_px[0] <= im.width <= 6000 and min_px[1] <= im.height <= 8000, im.size
    pdf = paths["pdf"].read_bytes()
    assert pdf.startswith(b"%PDF") and 5_000 < len(pdf) < 5_000_000
    assert b"CreationDate" not in pdf
    assert 5_000 < paths["png"].stat().st_size < 5_000_000


def test_error_histograms_are_readable_and_byte_stable(tmp_path):
    stats = error_stats(np.random.default_rng(0))
    fig = figures.error_histograms(stats, ["ife", "ife_noerr", "ddim", "not_run"], label="demo model")
    assert len(fig.axes) == 6  # mean and variance for each run present
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles[2].endswith("29 image-steps; 1 not converged") and "not converged" not in titles[0]
    assert fig.axes[3].get_xscale() == "log" and fig.axes[3].get_xlim() == fig.axes[5].get_xlim()
    first = figures.save(fig, tmp_path / "a" / "fig2")
    check_files(first)
    second = figures.save(figures.error_histograms(stats, ["ife", "ife_noerr", "ddim"], label="demo model"),
                          tmp_path / "b" / "fig2")
    for ext in ("png", "pdf"):
        assert first[ext].read_bytes() == second[ext].read_bytes(), ext


def test_error_histograms_need_a_run():
    with pytest.raises(ValueError, match="no error-statistics rows"):
        figures.error_histograms(error_stats(np.random.default_rng(0)), ["renoise"])


def test_image_grid_leaves_blank_cells_and_captions(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    fig = figures.image_grid([[image, image, None], [image, None, image]], column_titles=["original", "A", "B"],
                             row_titles=["one", "two"], captions=[["", "20.0 dB", ""], ["", "", "exact"]])
    axes = np.array(fig.axes).reshape(2, 3)
    assert [len(ax.images) for ax in axes.flat] == [1, 1, 0, 1, 0, 1]
    assert axes[0, 1].get_title() == "A" and axes[1, 0].get_ylabel() == "two"
    assert axes[0, 1].get_xlabel() == "20.0 dB" and axes[1, 2].get_xlabel() == "exact"
    check_files(figures.save(fig, tmp_path / "grid"), min_px=(200, 100))


def test_quality_vs_cost_joins_families_and_puts_exact_methods_on_top(tmp_path):
    points = pd.DataFrame([
        {"run": "fpi-K1", "method": "fpi", "nfe": 50, "seconds": 0.5, "psnr": 25.0},
        {"run": "fpi", "method": "fpi", "nfe": 150, "seconds": 1.4, "psnr": 28.0},
        {"run": "fpi-K10", "method": "fpi", "nfe": 500, "seconds": 1.2, "psnr": 31.0},  # faster: noise in time
        {"run": "ife", "method": "ife", "nfe": 50, "seconds": 0.4, "psnr": 30.0},
        {"run": "ife_e0", "method": "ife", "nfe": 51, "seconds": 0.4, "psnr": 29.5},
        {"run": "bdia", "method": "bdia", "nfe": 50, "seconds": 0.6, "psnr": np.inf},
    ])
    fig = figures.quality_vs_cost(points, label="demo model")
    nfe_axis, seconds_axis = fig.axes[:2]
    lines = [line for line in seconds_axis.get_lines() if len(line.get_xdata()) == 3]
    assert len(lines) == 1  # FPI's three K, in K order even where seconds do not increase
    assert list(lines[0].get_ydata()) == [25.0, 28.0, 31.0]
    labels = nfe_axis.get_legend_handles_labels()[1]
    assert labels == ["IFE", "IFE (ife_e0)", "FPI", "BDIA: exact (∞)"]
    top = max(point[1] for c in nfe_axis.collections for point in c.get_offsets())
    assert top > 31.0  # the exact method sits above every finite point
    check_files(figures.save(fig, tmp_path / "cost"))


def test_a_run_swept_in_k_and_in_n_gets_two_lines_through_it():
    points = pd.DataFrame([
        {"run": "fpi-N10", "method": "fpi", "nfe": 30, "seconds": 0.1, "psnr": 27.0},
        {"run": "fpi-N20", "method": "fpi", "nfe": 60, "seconds": 0.2, "psnr": 31.0},
        {"run": "fpi", "method": "fpi", "nfe": 150, "seconds": 0.5, "psnr": 33.0},
        {"run": "fpi-K2", "method": "fpi", "nfe": 100, "seconds": 0.4, "psnr": 32.0},
        {"run": "fpi-K10", "method": "fpi", "nfe": 500, "seconds": 1.5, "psnr": 35.0},
    ])
    nfe_axis = figures.quality_vs_cost(points, label="demo model").axes[0]
    lines = sorted(list(line.get_ydata()) for line in nfe_axis.get_lines() if len(line.get_xdata()) > 1)
    assert lines == [[27.0, 31.0, 33.0], [32.0, 33.0, 35.0]]   # N: 10, 20, 50; K: 2, 3, 10


def test_float_scored_exact_methods_go_on_top_without_stretching_the_axis():
    points = pd.DataFrame([
        {"run": "ife", "method": "ife", "nfe": 50, "seconds": 0.4, "psnr": 43.0},
        {"run": "aidi_a-K10", "method": "aidi_a", "nfe": 500, "seconds": 2.0, "psnr": 70.0},   # converged, not exact
        {"run": "bdia", "method": "bdia", "nfe": 50, "seconds": 0.6, "psnr": 292.0},           # float64 round-off
    ])
    nfe_axis = figures.quality_vs_cost(points, label="demo model").axes[0]
    assert nfe_axis.get_legend_handles_labels()[1] == ["IFE", "AIDI-A", "BDIA: exact (≥ 96 dB)"]
    top = max(point[1] for c in nfe_axis.collections for point in c.get_offsets())
    assert 70.0 < top < 80.0 and nfe_axis.get_ylim()[1] < 100


def test_placeholder_says_why_it_is_empty(tmp_path):
    fig = figures.placeholder("No run of FPI with a K in this preset", label="demo model")
    assert [t.get_text() for t in fig.axes[0].texts] == ["No run of FPI with a K in this preset"]
    with Image.open(figures.save(fig, tmp_path / "empty")["png"]) as im:
        assert im.width > 300


def test_every_registered_method_has_a_name_and_its_own_colour():
    from diffinv import METHODS

    assert set(METHODS) <= set(figures.NAMES)
    colours = [figures.color(m) for m in METHODS]
    assert len(set(colours)) == len(colours) and (0.4, 0.4, 0.4) not in colours  # no method in the fallback grey
    assert list(figures.NAMES)[:3] == ["ddim", "ife", "ife_noerr"]  # appended methods keep the old colours


def test_training_loss_shows_steps_chunk_means_and_the_rate_and_is_byte_stable(tmp_path):
    steps = np.arange(120)
    losses = pd.DataFrame({"step": steps, "loss": 1.0 / (1 + steps) + 0.01, "lr": np.linspace(1e-3, 0, 120)})
    fig = figures.training_loss(losses, label="learned demo model", window=50)
    ax, rate = fig.axes
    per_step, chunks = ax.get_lines()
    assert len(per_step.get_xdata()) == 120 and list(chunks.get_xdata()) == [24.5, 74.5, 109.5]
    assert ax.get_yscale() == "log" and len(rate.get_lines()) == 1
    first, second = figures.save(fig, tmp_path / "a" / "loss"), figures.save(
        figures.training_loss(losses, label="learned demo model", window=50), tmp_path / "b" / "loss")
    check_files(first)
    for ext in ("png", "pdf"):
        assert first[ext].read_bytes() == second[ext].read_bytes(), ext

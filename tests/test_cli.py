import numpy as np
import pytest
from PIL import Image

from diffinv.cli import main
from diffinv.models import GaussianMixtureDenoiser
from diffinv.testing import write_tiny_stable_diffusion
from conftest import random_mixture


@pytest.fixture
def mixture_file(tmp_path):
    base = random_mixture(k=3, d=3 * 4 * 4, seed=5)
    path = tmp_path / "gmm.npz"
    GaussianMixtureDenoiser(base.weights, base.means, base.covariances, patch_size=4).save(path)
    return path


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (18, 21, 3), dtype=np.uint8)).save(path)
    return path


def test_methods_lists_every_method_with_defaults(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "ife " in out and "error_approximation=True" in out and "aidi_a     K=3, m=3" in out


def test_invert_writes_reconstruction_and_metrics(mixture_file, photo, tmp_path, capsys):
    code = main(["invert", str(photo), "--model", str(mixture_file), "--method", "fpi", "--param", "K=2",
                 "--steps", "10", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    header, line = capsys.readouterr().out.strip().splitlines()
    fields = dict(zip(header.split("\t"), line.split("\t")))
    assert fields["nfe"] == "20" and 0 < float(fields["psnr"]) < 100 and -1 <= float(fields["ssim"]) <= 1
    recon = np.asarray(Image.open(fields["reconstruction"]))
    assert recon.shape == (16, 20, 3)  # cropped to a multiple of the patch size


def test_a_bad_image_is_one_error_line_and_the_rest_completes(mixture_file, photo, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    code = main(["invert", str(bad), str(photo), "--model", str(mixture_file), "--steps", "5", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.png" in captured.err and "cannot read image" in captured.err
    assert str(photo) in captured.out


def test_bad_method_parameter_fails_before_loading(photo, capsys):
    assert main(["invert", str(photo), "--model", "nowhere", "--method", "ddim", "--param", "K=2"]) == 2
    assert "has no parameter ['K']" in capsys.readouterr().err


def test_invert_through_a_diffusers_folder(tmp_path, photo, capsys):
    folder = write_tiny_stable_diffusion(tmp_path / "sd")
    code = main(["invert", str(photo), "--model", str(folder), "--size", "16", "--steps", "3", "--guidance", "2",
                 "--prompt", "the cat", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[1].split("\t")
    assert line[2] == "6"  # 3 steps, CFG counts 2


def test_size_not_a_multiple_of_the_patch_is_refused(mixture_file, photo):
    with pytest.raises(SystemExit, match="not a multiple of 4"):
        main(["invert", str(photo), "--model", str(mixture_file), "--size", "10"])


def test_text_parameters_are_read_as_their_type_before_anything_loads(mixture_file, photo, tmp_path, capsys):
    """``compute_e0=false`` is false (N NFE, not N + 1); a value that is not the parameter's type stops the
    command before the model is read, naming the parameter."""
    code = main(["invert", str(photo), "--model", str(mixture_file), "--param", "compute_e0=false", "--steps", "10",
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    header, line = capsys.readouterr().out.strip().splitlines()
    assert dict(zip(header.split("\t"), line.split("\t")))["nfe"] == "10"
    for param, message in (("K=abc", "K: must be an integer >= 1, got 'abc'"), ("K=0", "got 0"),
                           ("K=2.5", "got 2.5")):
        assert main(["invert", str(photo), "--model", "nowhere", "--method", "fpi", "--param", param]) == 2
        assert message in capsys.readouterr().err


def test_inputs_with_one_stem_get_outputs_of_their_own(mixture_file, tmp_path, capsys):
    rng = np.random.default_rng(1)
    paths = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "x.jpg"]
    for path in paths:
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "out"
    assert main(["invert", *map(str, paths), "--model", str(mixture_file), "--method", "fpi", "--param", "K=2",
                 "--steps", "4", "--out", str(out), "--quiet"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a_x.fpi_K2_N4.png", "b_x.fpi_K2_N4.png", "x_jpg.fpi_K2_N4.png"]
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    assert [line.split("\t")[-1] for line in lines] == [str(out / name) for name in written]
    # another parameter gives another name: nothing is overwritten
    assert main(["invert", str(paths[0]), "--model", str(mixture_file), "--method", "fpi", "--param", "K=3",
                 "--steps", "4", "--out", str(out), "--quiet"]) == 0
    assert "x.fpi_K3_N4.png" in {p.name for p in out.iterdir()} and len(list(out.iterdir())) == 4


def test_missing_inputs_and_an_unwritable_out_stop_before_the_model_loads(photo, tmp_path, capsys):
    with pytest.raises(SystemExit, match="no such image file: .*missing.png"):
        main(["invert", str(photo), str(tmp_path / "missing.png"), "--model", "nowhere"])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match="cannot write reconstructions to .*a-file/sub"):
        main(["invert", str(photo), "--model", "nowhere", "--out", str(blocker / "sub")])


def test_a_corrupt_model_file_is_named_with_the_reason(photo, tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(SystemExit, match=r"--model .*broken.npz: .*not a saved GaussianMixtureDenoiser \(BadZipFile"):
        main(["invert", str(photo), "--model", str(bad), "--out", str(tmp_path), "--quiet"])

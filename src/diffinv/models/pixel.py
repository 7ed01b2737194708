"""A pixel-space diffusion model: diffusers' ``UNet2DModel`` with its DDPM/DDIM scheduler config.

The image is the latent (values in [-1, 1], ``decode(encode(x))`` is ``x``), as for the analytic mixture;
the network is unconditional, so prompts change nothing and there is no classifier-free guidance. Its
noise schedule is the scheduler config's (a VP path; DDIM's grid as ``DDIMPipeline`` builds it from that
config), and its output is the noise or, where the config says ``prediction_type: v_prediction``, the
velocity ``v = a eps - s x`` (converted in :meth:`DiffusionModel.eps`).

Two folder layouts are read, safetensors only:

- the one ``DDIMPipeline.save_pretrained`` writes and :mod:`diffinv.workflow.training` saves: ``model_index.json``,
  ``unet/`` (``config.json``, ``diffusion_pytorch_model.safetensors``) and ``scheduler/scheduler_config.json``;
- the one of the public pretrained DDPMs (Ho et al. 2020, converted by diffusers: google/ddpm-cifar10-32,
  google/ddpm-celebahq-256, google/ddpm-ema-church-256, ...): ``config.json``, the weights and
  ``scheduler_config.json`` (a ``DDPMScheduler``: linear betas 1e-4 to 0.02, 1,000 steps) at the
  repository's root, beside a ``model_index.json`` naming ``DDPMPipeline``. diffusers loads a pipeline
  component from the root when its subfolder is missing (``load_sub_model`` in
  ``diffusers/pipelines/pipeline_loading_utils.py``), which is how ``DDPMPipeline.from_pretrained`` reads them.

What could not be verified here (no network): that the root layout holds for every one of those
repositories (seen for google/ddpm-cifar10-32 and google/ddpm-celebahq-256 in public code and caches), and
that each has ``diffusion_pytorch_model.safetensors`` and not only the pickled ``.bin`` at the pinned
commit (seen for google/ddpm-cifar10-32 at :data:`DDPM_CIFAR10_REVISION` only). A repository with only
``.bin`` weights is refused: pickles are never loaded.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor

from ..schedule import is_flow_config
from .base import Conditioning, DiffusionModel, Prompt
from .latent import Components

DDPM_CIFAR10 = "google/ddpm-cifar10-32"
# The commit public code pins this repository at and a public cache resolved `main` to; not confirmed
# online from this project (README).
DDPM_CIFAR10_REVISION = "267b167dc01f0e4e61923ea244e8b988f84deb80"


def downsampling(levels: int) -> int:
    """The total downsampling factor of a UNet2DModel with ``levels`` down blocks: every one but the last
    halves the image (``add_downsample=not is_final_block`` in ``UNet2DModel.__init__``), so image sides
    must be multiples of it."""
    return 2 ** (levels - 1)


class PixelDiffusionBackend(DiffusionModel):
    """``UNet2DModel`` + scheduler config behind the model protocol; see the module for the layouts read.

    ``dtype`` is the UNet's, ``latent_dtype`` (default: the same) that of the images the methods' arithmetic
    runs on (float64 trajectories around a float32 network). ``channels_last`` lays the activations out as
    NHWC, ``compile`` wraps the UNet in ``torch.compile``.
    """

    kind = "pixel"
    path = "vp"            # DDPM/DDIM scheduler configs only: never a flow
    image_multiple = None  # the UNet's own downsampling (pixel_multiple), known once it is loaded or from model.train
    guidance = "none"      # unconditional: w = 1 only, one pass
    hub = True             # a diffusers repository at a revision, unless the workflow trains it (trainable)
    trainable = True       # model.train: rule train_model, diffinv.workflow.training
    options = ("latent_dtype", "channels_last", "compile", "local_files_only")
    prediction_types: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction")  # the scheduler config's prediction_type
    latent_is_image = True

    def __init__(self, unet: Any, scheduler_config: Mapping[str, Any], *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, latent_dtype: torch.dtype | None = None,
                 channels_last: bool = False, compile: bool = False) -> None:
        super().__init__()
        config = unet.config
        if config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None:
            raise ValueError("a class-conditional UNet2DModel needs class labels; only unconditional ones are "
                             "supported")
        if config.out_channels != config.in_channels:
            raise ValueError(f"the UNet predicts {config.out_channels} channels from {config.in_channels}: a "
                             "learned-variance output is not supported, only noise or velocity")
        scheduler_config = dict(scheduler_config)
        if is_flow_config(scheduler_config):
            raise ValueError(f"scheduler {scheduler_config.get('_class_name')} is a rectified flow; a UNet2DModel "
                             "here runs on a DDPM/DDIM (VP) scheduler config")
        prediction = scheduler_config.get("prediction_type", "epsilon")
        if prediction not in self.prediction_types:
            raise ValueError(f"scheduler prediction_type {prediction!r} is not supported; one of "
                             f"{list(self.prediction_types)}")
        self.prediction_type = prediction
        self.scheduler_config = scheduler_config
        self.device, self.dtype = torch.device(device), dtype
        self._latent_dtype = latent_dtype or dtype
        unet.to(self.device, *(() if unet.dtype == dtype else (dtype,))).eval().requires_grad_(False)
        self.channels_last = channels_last
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        self.unet = torch.compile(unet) if compile else unet
        self.in_channels = int(config.in_channels)
        self.pixel_multiple = downsampling(len(config.down_block_types))
        size = config.sample_size
        self.resolution = int(size if isinstance(size, int) else size[0])  # the size it was trained at

    @property
    def latent_dtype(self) -> torch.dtype:
        return self._latent_dtype

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike = DDPM_CIFAR10, *, revision: str | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        local_files_only: bool = False, **options: Any) -> "PixelDiffusionBackend":
        """Load from a Hub id at ``revision`` (the pinned one for :data:`DDPM_CIFAR10`) or a local folder,
        either layout (see the module); float32 unless ``dtype``. ``options``: ``latent_dtype``,
        ``channels_last``, ``compile``."""
        from diffusers import DDIMScheduler, UNet2DModel

        parts, device, dtype = Components.open(source, revision, (DDPM_CIFAR10, DDPM_CIFAR10_REVISION), device,
                                               dtype, torch.float32, local_files_only)
        unet_folder, config = _locate(parts, "unet", lambda sub: UNet2DModel.load_config(
            parts.source, subfolder=sub, **parts.common))
        if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise ValueError(f"{source}: {unet_folder or 'the root'} holds a {config['_class_name']}, not a "
                             "UNet2DModel")
        unet = parts.network(UNet2DModel, unet_folder)
        _, scheduler_config = _locate(parts, "scheduler", lambda sub: parts.scheduler_config(DDIMScheduler, sub))
        return cls(unet, scheduler_config, device=device, dtype=dtype, **options)

    # -- the network ---------------------------------------------------------------------------
    def forward(self, z: Tensor, timestep: int, embedding: Tensor | None) -> Tensor:
        x = z.to(self.device, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.unet(x, torch.tensor(timestep, device=self.device)).sample
        return out.to(z.dtype)  # the caller's dtype: the trajectory's arithmetic stays in it

    @torch.no_grad()
    def guided(self, z: Tensor, timestep: int, cond: Conditioning, guidance: float = 1.0) -> Tensor:
        if guidance != 1.0:
            raise ValueError(f"guidance {guidance}: the pixel model is unconditional, so there is nothing to guide "
                             "towards; use guidance 1")
        return super().guided(z, timestep, cond, guidance)

    # -- images and prompts: the latent is the image --------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1], (B, C, H, W) with the UNet's channels and sides multiples of :attr:`pixel_multiple`."""
        channels, (h, w) = images.shape[1], images.shape[-2:]
        if channels != self.in_channels:
            raise ValueError(f"the UNet takes {self.in_channels}-channel images, got {channels}")
        if h % self.pixel_multiple or w % self.pixel_multiple:
            raise ValueError(f"the UNet needs image sides that are multiples of {self.pixel_multiple}, got {h}x{w}")
        return images.to(self.device, self.latent_dtype)

    def decode(self, latents: Tensor) -> Tensor:
        return latents.clamp(-1, 1)

    def condition(self, prompt: Prompt, batch_size: int) -> Conditioning:
        return Conditioning(None, None)  # an unconditional network: prompts change nothing


def _locate(parts: Components, subfolder: str, read) -> tuple[str | None, dict[str, Any]]:
    """``(subfolder, read(subfolder))``, or ``(None, read(None))`` from the root where the subfolder is
    missing, as diffusers' pipelines fall back; a failure of both names the source and both places."""
    errors = []
    for candidate in (subfolder, None):
        try:
            return candidate, dict(read(candidate))
        except (OSError, EnvironmentError) as exc:
            errors.append(f"{candidate or 'root'}: {exc}")
    raise OSError(f"cannot load {parts.source!s} (revision {parts.revision}): {'; '.join(errors)}")

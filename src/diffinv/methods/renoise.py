"""ReNoise (Garibi, Patashnik, Voynov, Averbuch-Elor, Cohen-Or, ECCV 2024, arXiv 2403.14602).

Each step refines the DDIM inversion estimate by renoising: ``zhat^(0) = z_{i-1}``,
``eps^(k) = eps_i(zhat^(k))``, ``zhat^(k+1) = Phi(i-1 -> i; z_{i-1}, R(eps^(k)))`` for k = 0..K_i, then
``z_i = Phi(i-1 -> i; z_{i-1}, R(mean of eps^(k), k in W_i))`` when the averaging window ``W_i`` holds
any iterate. Below timestep 250 the window is [0, 5) and ``K_i = min(K, 5)``; above, [8, 10) and
``K_i = K``. ``R`` is the noise regulariser (a patchwise KL term to a reference prediction and an
auto-correlation penalty, from pix2pix-zero), applied to iterates from the window's start on and to
the average, never outside the window. The reference is ``eps_i(z0)``: the official SD path
replaces ``add_noise`` by the identity, so the reference sees the clean latent.

Defaults are the official 50-step Stable Diffusion example (``examples/inversion_example_sd.py`` and
``src/config.py`` of garibida/ReNoise-Inversion): K = 1 renoising step, averaging on,
lambda_ac = 20, lambda_kl = 0.065, 4 regulariser steps of one KL step then 5 auto-correlation rolls;
noise correction is for stochastic samplers and is not used with DDIM. NFE per step:
``K_i + 1``, plus 1 for the reference when ``reg_steps > 0``: 150 per 50-step image.

``nan_guard`` (off by default, to reproduce ReNoise issue #9, black outputs on flat white images)
skips, per image, a regulariser update whose gradient is not finite. The auto-correlation shifts
are random; ``seed`` makes them reproducible, one generator per image so a batch equals its images
run one by one.

The regulariser's gradients are in closed form and computed for the whole batch, its channels and
all pyramid levels at once (``NoiseRegularizer``). It amplifies differences in its input, so over an
inversion even rounding differences grow to visible ones: compare single calls, not inversions.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..algebra import noise_of, transfer
from ..schedule import Schedule
from .base import Callback, EpsFn, levels
from .params import NonNegativeFloat, NonNegativeInt

KL_EPSILON = 1e-6
KL_CLIP = 100.0


def patch_kl(e: Tensor, reference: Tensor, patch: int = 4) -> Tensor:
    """Sum over 4 x 4 patches and channels of |KL-like divergence| between per-patch Gaussian fits.

    ``e`` and ``reference`` are (C, H, W); per patch and channel the statistic is
    ``log((v_ref + eps) / (v + eps)) + (v + (mu - mu_ref)^2) / (v_ref + eps) - 1`` (unbiased variances).
    """
    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        rows = x.unfold(1, patch, patch).unfold(2, patch, patch).flatten(3)   # (C, nh, nw, p*p)
        return rows.mean(-1), rows.var(-1)

    mu, var = stats(e)
    mu_ref, var_ref = stats(reference)
    kl = torch.log((var_ref + KL_EPSILON) / (var + KL_EPSILON)) + (var + (mu - mu_ref) ** 2) / (var_ref + KL_EPSILON) - 1
    return kl.abs().sum()


def _patch_values(x: Tensor, patch: int) -> Tensor:
    """(..., H, W) -> (..., patch * patch, nh, nw): value k (row-major) of every whole patch, a copy.

    (Faster to make and to reduce than the patches' rows, (..., nh, nw, patch * patch).)
    """
    nh, nw = x.shape[-2] // patch, x.shape[-1] // patch
    lead = x.ndim - 2
    blocks = x[..., :nh * patch, :nw * patch].unflatten(-1, (nw, patch)).unflatten(-3, (nh, patch))
    values = blocks.permute(*range(lead), lead + 1, lead + 3, lead, lead + 2)  # (..., row, column, nh, nw)
    return values.reshape(*x.shape[:-2], patch * patch, nh, nw)


def _patch_moments(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, deviations from it and unbiased variance of each patch (``torch.var`` is ~10x slower on 16 values)."""
    mean = values.mean(-3)
    deviation = values - mean[..., None, :, :]
    return mean, deviation, (deviation * deviation).sum(-3) / float(values.shape[-3] - 1)


def _patch_kl_grad(e: Tensor, ref_mean: Tensor, ref_var_eps: Tensor, patch: int) -> Tensor:
    """Gradient of ``patch_kl`` with respect to ``e`` (..., C, H, W), in closed form.

    ``ref_var_eps`` is the reference's patch variance plus ``KL_EPSILON``. The chain rule is taken in the
    order autograd takes it (through ``|kl|``, the log of the ratio, the quotient, the variance and the
    mean), so the result is autograd's up to rounding, the float16 overflow of ReNoise issue #9 included.
    Pixels outside whole patches get 0.
    """
    values = _patch_values(e, patch)
    n, nh, nw = values.shape[-3:]
    mean, deviation, var = _patch_moments(values)
    var_eps = var + KL_EPSILON
    ratio = ref_var_eps / var_eps
    diff = mean - ref_mean
    kl = torch.log(ratio) + (var + diff ** 2) / ref_var_eps - 1
    sign = kl.sgn()
    through_fit = sign / ref_var_eps                             # d|kl| / d(var + diff^2)
    grad_var = through_fit - (sign / ratio) * (ratio / var_eps)  # ... plus the log's d/d var_eps
    grad_mean = through_fit * (2.0 * diff)
    grad_values = torch.addcmul((grad_mean / float(n))[..., None, :, :], ((2.0 / (n - 1)) * grad_var)[..., None, :, :],
                                deviation)
    lead = e.ndim - 2
    grad = grad_values.unflatten(-3, (patch, patch)).permute(*range(lead), lead + 2, lead, lead + 3, lead + 1).reshape(
        *e.shape[:-2], nh * patch, nw * patch)
    if grad.shape != e.shape:
        grad = F.pad(grad, (0, e.shape[-1] - nw * patch, 0, e.shape[-2] - nh * patch))
    return grad


def patch_kl_grad(e: Tensor, reference: Tensor, patch: int = 4) -> Tensor:
    """Gradient of ``patch_kl(e, reference)`` with respect to ``e``; any leading dimensions (one image each)."""
    ref_mean, _, ref_var = _patch_moments(_patch_values(reference, patch))
    return _patch_kl_grad(e, ref_mean, ref_var + KL_EPSILON, patch)


def _pyramid_sizes(height: int, width: int) -> tuple[tuple[int, int], ...]:
    """The auto-correlation loss's average-pooling pyramid: halving while the height exceeds 8."""
    sizes = [(height, width)]
    while sizes[-1][0] > 8:
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return tuple(sizes)


class _Shifts:
    """The random roll shifts of a series of auto-correlation gradients, drawn as the official loop draws them.

    Per image and gradient: per channel, per pyramid level, ``torch.randint(0, max(h // 2, 1), (1,))`` on
    the image's generator. The shifts do not depend on the noise, so a whole regulariser call's shifts are
    drawn first, in that order, by one ``randint`` per image: on the CPU a draw of n values is n draws of
    one, each ``r % high`` of one 32-bit word ``r``, and ``(r % L) % high == r % high`` for every ``high``
    dividing ``L``, so one draw below the highs' least common multiple, reduced per slot, gives the same
    shifts as the official loop.
    """

    def __init__(self, batch: int, channels: int, sizes: Sequence[tuple[int, int]], rolls: int):
        highs = [max(h // 2, 1) for h, _ in sizes]
        self.common = math.lcm(*highs)
        if self.common >= 2 ** 32:  # a 64-bit draw would take two words per value
            raise ValueError(f"renoise: pyramid of sizes {sizes} needs shifts below {highs}, whose least "
                             f"common multiple {self.common} does not fit a 32-bit draw")
        self.highs = torch.tensor(highs * (channels * rolls))
        self.values = torch.empty(batch, rolls, channels, len(sizes), dtype=torch.long)

    def draw(self, generators: Sequence[torch.Generator]) -> Tensor:
        """(rolls, B, C, levels) shifts."""
        for generator, image in zip(generators, self.values.view(len(self.values), -1), strict=True):
            torch.randint(0, self.common, image.shape, generator=generator, out=image)
            image.remainder_(self.highs)
        return self.values.transpose(0, 1)


def _morton(phase_h: Tensor, phase_w: Tensor, bits: int) -> Tensor:
    """Z-order index of a plane: base-4 digits ``2 h_k + w_k`` of its phases' bits, most significant first.

    In this order the 4 planes that 2 x 2 average pooling adds into one plane of the level below are
    consecutive, for every level.
    """
    index = torch.zeros_like(phase_h + phase_w)
    for k in range(bits):
        index = index + (((phase_h >> k) & 1) * 2 + ((phase_w >> k) & 1)) * 4 ** k
    return index


@lru_cache(maxsize=16)
def _roll_tables(sizes: tuple[tuple[int, int], ...]) -> tuple[Tensor, ...]:
    """Where each rolled row of a ``_PolyphaseRun`` comes from, per level and possible shift.

    Per level an int32 table (shifts, 4, planes * hc): the offset, in one image-channel's block of the
    run's width-doubled planes, of the ``wc`` values that make up each row of the level rolled by
    +s along H, +s along W, -s along H and -s along W.
    """
    depth = len(sizes) - 1
    hc, wc = sizes[-1]
    first = list(itertools.accumulate((4 ** (depth - j) for j in range(depth + 1)), initial=0))
    row = torch.arange(hc).view(1, 1, 1, hc)
    tables = []
    for j, (height, _) in enumerate(sizes):
        bits = depth - j
        phases = 2 ** bits
        shift = torch.arange(max(height // 2, 1)).view(-1, 1, 1, 1)
        phase_h, phase_w = torch.arange(phases).view(1, phases, 1, 1), torch.arange(phases).view(1, 1, phases, 1)

        def start(plane_h: Tensor, plane_w: Tensor, source_row: Tensor, column: Tensor | int) -> Tensor:
            return ((first[j] + _morton(plane_h, plane_w, bits)) * hc + source_row) * (2 * wc) + column

        kinds = []
        for moved_by in (-shift, shift):  # roll(n, s)[x] = n[x - s]; roll(n, -s)[x] = n[x + s]
            # a phase moved past the last one wraps into the next (or previous) row or column of its plane
            moved = phase_h + moved_by
            kinds.append(start(moved % phases, phase_w, (row + moved.div(phases, rounding_mode="floor")) % hc, 0))
            moved = phase_w + moved_by
            kinds.append(start(phase_h, moved % phases, row, moved.div(phases, rounding_mode="floor") % wc))
        # output rows in the planes' order: Z-order of (phase_h, phase_w), then row
        order = _morton(phase_h, phase_w, bits).flatten().argsort()
        shape = (len(shift), phases, phases, hc)
        table = torch.stack([kind.expand(shape) for kind in kinds], 1).reshape(len(shift), 4, phases * phases, hc)
        tables.append(table[:, :, order].reshape(len(shift), 4, -1).int())
    return tuple(tables)


class _PolyphaseRun:
    """Auto-correlation terms of pyramid levels that each halve the one above exactly, for a batch.

    A level of size (hc 2^m, wc 2^m), m levels above the run's coarsest (hc, wc), is stored as its 4^m
    polyphase planes ``plane[p, q][i, j] = level[i 2^m + p, j 2^m + q]`` (hc x wc each, in the Z-order of
    ``_morton``), all levels' planes side by side. Then every level is made of rows of the same ``wc``
    values: 2 x 2 average pooling adds 4 consecutive planes into one, and rolling a level by s along H
    or W moves each row of a plane to a row of another plane, cyclically shifted within its ``wc``
    values. So all levels' four rolls are one gather of rows from the planes doubled in width, and the
    channels, images and levels share every other operation too.

    Planes hold block sums (level j of the run times 4^j: pooling without its 1/4), the factors
    going into ``mixing``. ``grad`` holds each level's gradient and, after ``accumulate``, the top
    level's gradient of the whole run.
    """

    def __init__(self, sizes: tuple[tuple[int, int], ...], batch: int, channels: int, rolls: int,
                 dtype: torch.dtype, device: torch.device):
        depth = len(sizes) - 1
        hc, wc = sizes[-1]
        counts = [4 ** (depth - j) for j in range(depth + 1)]
        first = list(itertools.accumulate(counts, initial=0))
        n_planes, pixels, images = first[-1], hc * wc, batch * channels
        self.sizes, self.depth, self.hc, self.wc, self.batch, self.channels = sizes, depth, hc, wc, batch, channels

        def buffer(*shape: int, dtype: torch.dtype = dtype) -> Tensor:
            return torch.empty(*shape, dtype=dtype, device=device)

        self.planes = buffer(batch, channels, n_planes, hc, wc)
        # the planes doubled in width, then the products of the sums: one buffer, as the working set has to
        # stay in a core's cache
        scratch = buffer(images * n_planes * hc * 2 * wc)
        self.doubled = scratch.view(batch, channels, n_planes, hc, 2 * wc)
        # every run of wc consecutive values of ``doubled``: row r rolled by c is the run starting at r 2wc + c
        self.windows = scratch.as_strided((scratch.numel() - wc + 1, wc), (1, 1))
        self.rolled = buffer(batch, channels, 4, n_planes, hc, wc)  # +s along H, +s along W, -s along H, -s along W
        self.rolled_rows = self.rolled.view(-1, wc)
        self.ahead, self.behind = self.rolled[:, :, :2], self.rolled[:, :, 2:]
        self.products = scratch.view(batch, channels, 2, n_planes, hc, wc)
        self.product_rows = scratch.view(images * 2, n_planes, pixels)
        self.sums = buffer(images * 2, n_planes)
        self.coefficients = buffer(images * 2, n_planes)
        coefficients = self.coefficients.view(batch, channels, 2, n_planes, 1, 1)
        self.terms = [(self.ahead[:, :, axis], coefficients[:, :, axis]) for axis in (0, 1)]  # ahead + behind, after
        self.grad = buffer(batch, channels, n_planes, hc, wc)
        # planes' sums of n * roll(n, s) -> each plane's 2 m / N with m = mean over its level, block sums undone:
        # sums carry 16^j, the rolls they multiply 4^j
        level = torch.repeat_interleave(torch.arange(depth + 1), torch.tensor(counts))
        scale = torch.tensor([2.0 / (h * w) ** 2 / 64 ** j for j, (h, w) in enumerate(sizes)], dtype=torch.float64)
        self.mixing = ((level[:, None] == level[None, :]) * scale[level]).to(dtype=dtype, device=device)
        self.pool, self.adjoint = [], []
        for j in range(depth):
            fine = (slice(None), slice(None), slice(first[j], first[j + 1]))
            coarse = (slice(None), slice(None), slice(first[j + 1], first[j + 2]))
            self.pool.append((self.planes[fine].unflatten(2, (counts[j + 1], 4)).flatten(-2),
                              self.planes[coarse].flatten(-2)))
            # adjoint of 2 x 2 average pooling: a quarter of each coarse value to the 4 planes it pools
            self.adjoint.insert(0, (self.grad[fine].unflatten(2, (counts[j + 1], 4)).flatten(-2),
                                    self.grad[coarse].flatten(-2)[:, :, :, None]))
        self.top, self.top_grad = self.planes[:, :, :counts[0]], self.grad[:, :, :counts[0]]
        self.coarsest, self.coarsest_grad = self.planes[:, :, -1], self.grad[:, :, -1]
        # rows to gather, per roll: per-level tables' rows for the drawn shifts, offset to each image-channel
        self.tables = [table.to(device) for table in _roll_tables(sizes)]
        self.level_starts = [buffer(rolls * images, 4, table.shape[-1], dtype=torch.int32) for table in self.tables]
        self.joined_starts = buffer(rolls, images, 4 * n_planes * hc, dtype=torch.int32)
        block = n_planes * hc * 2 * wc  # one image-channel's part of ``doubled``
        self.image_offsets = (torch.arange(images, dtype=torch.int32, device=device) * block).view(1, -1, 1)
        self.starts = buffer(rolls, images, 4 * n_planes * hc, dtype=torch.int32)
        self.roll_starts = self.starts.view(rolls, -1).unbind(0)
        # loading: the top level as (B, C, hc, h bits, wc, w bits) into its planes as (B, C, h and w bits
        # alternating, hc, wc), most significant bits first, in one copy; unloading: planes to row-major order,
        # then one copy (a copy straight to the level is several times slower, its innermost loop being 2 long)
        bits = list(range(depth))
        self.natural_bits = (batch, channels, hc, *[2] * depth, wc, *[2] * depth)
        self.top_bits = self.top.unflatten(2, [2] * (2 * depth)) if depth else self.top[:, :, 0]
        self.to_planes = [0, 1, *[d for k in bits for d in (3 + k, 4 + depth + k)], 2, 3 + depth]
        phases = torch.arange(2 ** depth)
        self.row_major = _morton(phases.view(-1, 1), phases.view(1, -1), depth).flatten().to(device)
        self.planes_grid = (batch, channels, 2 ** depth, 2 ** depth, hc, wc)
        self.natural_shape = (batch, channels, hc << depth, wc << depth)

    def set_shifts(self, shifts: Tensor) -> None:
        """Rows to gather for each roll; ``shifts`` (rolls, B, C, levels of the run)."""
        for j, (table, starts) in enumerate(zip(self.tables, self.level_starts)):
            torch.index_select(table, 0, shifts[..., j].reshape(-1), out=starts)
        torch.cat(self.level_starts, 2, out=self.joined_starts.view(self.level_starts[0].shape[0], 4, -1))
        torch.add(self.joined_starts, self.image_offsets, out=self.starts)

    def load(self, natural: Tensor) -> None:
        """Top level's planes from the level itself (B, C, H, W)."""
        self.top_bits.copy_(natural.reshape(self.natural_bits).permute(self.to_planes))

    def natural(self, gradient: bool = False) -> Tensor:
        """(B, C, H, W) from the top level's planes, or from its gradient's."""
        planes = torch.index_select(self.top_grad if gradient else self.top, 2, self.row_major)
        return planes.view(self.planes_grid).permute(0, 1, 4, 2, 5, 3).reshape(self.natural_shape)

    def coarsest_level(self) -> Tensor:
        return self.coarsest * 0.25 ** self.depth

    def pool_levels(self) -> None:
        for fine, coarse in self.pool:
            torch.sum(fine, 3, out=coarse)

    def level_gradients(self, roll: int) -> None:
        """Each level's own term ``2 m (roll(n, s) + roll(n, -s)) / N``, both axes, into ``grad``."""
        torch.cat([self.planes, self.planes], -1, out=self.doubled)
        torch.index_select(self.windows, 0, self.roll_starts[roll], out=self.rolled_rows)
        torch.mul(self.ahead, self.planes[:, :, None], out=self.products)
        torch.sum(self.product_rows, -1, out=self.sums)
        torch.mm(self.sums, self.mixing, out=self.coefficients)
        self.ahead.add_(self.behind)
        (both_h, coefficient_h), (both_w, coefficient_w) = self.terms
        torch.mul(both_h, coefficient_h, out=self.grad)
        self.grad.addcmul_(both_w, coefficient_w)

    def accumulate(self) -> None:
        for fine, coarse in self.adjoint:
            fine.add_(coarse, alpha=0.25)

    def add_upsampled(self, grad: Tensor) -> None:
        """Add the adjoint of 2 x 2 average pooling (cropping odd sizes) of the next level's ``grad``."""
        h, w = grad.shape[-2:]
        target = self.coarsest_grad[..., :2 * h, :2 * w].unflatten(-1, (w, 2)).unflatten(-3, (h, 2))
        target.add_(grad[:, :, :, None, :, None], alpha=0.25)


class _AutoCorrelation:
    """Closed-form gradient of pix2pix-zero's auto-correlation loss for a batch of noises (B, C, H, W).

    The loss sums, over channels, both spatial axes and an average-pooling pyramid (halving while the
    height exceeds 8), ``m^2`` with ``m = mean(n * roll(n, s))`` over the level's N elements and a random
    shift ``s`` below half its height. Then ``d m^2 / d n = 2 m (roll(n, s) + roll(n, -s)) / N``, and a
    level's gradient reaches the level above through the adjoint of 2 x 2 average pooling. (Autograd
    through the loss was ReNoise's main cost.) The levels are split into runs of exact halvings, each
    a ``_PolyphaseRun``: one run for sizes divisible by 2^(levels - 1), as latents and the demo's are;
    an odd size starts a new run, reached through average pooling in the usual layout. Holds the noise
    being regularised, in the first run's planes, between ``load`` and ``unload``.
    """

    def __init__(self, shape: torch.Size, rolls: int, dtype: torch.dtype, device: torch.device):
        batch, channels, height, width = shape
        sizes = _pyramid_sizes(height, width)
        breaks = [j for j in range(1, len(sizes)) if sizes[j - 1][0] % 2 or sizes[j - 1][1] % 2]
        self.bounds = list(zip([0, *breaks], [*breaks, len(sizes)]))
        self.runs = [_PolyphaseRun(sizes[a:b], batch, channels, rolls, dtype, device) for a, b in self.bounds]

    def set_shifts(self, shifts: Tensor) -> None:
        """``shifts`` (rolls, B, C, levels); roll ``r`` of ``gradient`` and ``descend`` uses ``shifts[r]``."""
        for run, (a, b) in zip(self.runs, self.bounds):
            run.set_shifts(shifts[..., a:b])

    def load(self, e: Tensor) -> None:
        self.runs[0].load(e)

    def unload(self) -> Tensor:
        return self.runs[0].natural()

    def gradient(self, roll: int) -> Tensor:
        """The loaded noise's gradient for shifts ``roll``, as the first run's top planes."""
        runs = self.runs
        for upper, lower in zip(runs, runs[1:]):
            upper.pool_levels()
            lower.load(F.avg_pool2d(upper.coarsest_level(), kernel_size=2))
        runs[-1].pool_levels()
        for run in runs:
            run.level_gradients(roll)
        for upper, lower in zip(runs[-2::-1], runs[:0:-1]):
            lower.accumulate()
            upper.add_upsampled(lower.natural(gradient=True))
        runs[0].accumulate()
        return runs[0].top_grad

    def natural_gradient(self, roll: int) -> Tensor:
        self.gradient(roll)
        return self.runs[0].natural(gradient=True)

    def descend(self, roll: int, rate: float, nan_guard: bool) -> None:
        """``e - rate * gradient``, in place; with ``nan_guard`` not for an image whose gradient is not finite."""
        grad, top = self.gradient(roll), self.runs[0].top
        if nan_guard:
            finite = torch.isfinite(grad).reshape(grad.shape[0], -1).all(1).view(-1, 1, 1, 1, 1)
            top.copy_(torch.where(finite, top - rate * grad, top))
        else:
            top.sub_(grad, alpha=rate)


def auto_correlation_grad(e: Tensor, generator: torch.Generator) -> Tensor:
    """Gradient of pix2pix-zero's auto-correlation loss on one image's noise (C, H, W), in closed form.

    The shifts are drawn from ``generator`` per channel and level in the official loop's order; see
    ``_AutoCorrelation`` for the loss and the closed form.
    """
    sizes = _pyramid_sizes(e.shape[-2], e.shape[-1])
    autocorrelation = _AutoCorrelation(e[None].shape, 1, e.dtype, e.device)
    autocorrelation.set_shifts(_Shifts(1, e.shape[0], sizes, 1).draw([generator]).to(e.device))
    autocorrelation.load(e[None])
    return autocorrelation.natural_gradient(0)[0]


def _descend(e: Tensor, grad: Tensor, rate: float, nan_guard: bool) -> Tensor:
    """``e - rate * grad``, per image; with ``nan_guard`` an image whose gradient is not finite keeps ``e``."""
    step = e - rate * grad
    if not nan_guard:
        return step
    finite = torch.isfinite(grad).reshape(grad.shape[0], -1).all(1).view(-1, *[1] * (grad.ndim - 1))
    return torch.where(finite, step, e)


class NoiseRegularizer:
    """The ReNoise noise regulariser for a batch of noises (B, C, H, W), one generator per image.

    ``reg_steps`` times: one KL step ``e - lambda_kl * clip(d patch_kl / d e, +-100)`` towards the
    reference's patch statistics, then ``ac_rolls`` auto-correlation steps
    ``e - lambda_ac / ac_rolls * d L_ac / d e``. Nothing mixes images, and image b's shifts come from
    ``generators[b]``, so a batch equals its images one by one. Keeps buffers for the last shape between
    calls (ReNoise calls it with one shape throughout an inversion).
    """

    def __init__(self, generators: Sequence[torch.Generator], *, lambda_kl: float, lambda_ac: float, reg_steps: int,
                 ac_rolls: int, nan_guard: bool, patch: int = 4):
        self.generators = list(generators)
        self.lambda_kl, self.lambda_ac, self.nan_guard, self.patch = lambda_kl, lambda_ac, nan_guard, patch
        self.reg_steps, self.ac_rolls = reg_steps, ac_rolls
        self.rolls = reg_steps * ac_rolls if lambda_ac > 0 else 0
        self._workspace: tuple | None = None

    def _prepared(self, e: Tensor) -> tuple[_Shifts, _AutoCorrelation | None]:
        key = (e.shape, e.dtype, e.device)
        if self._workspace is None or self._workspace[0] != key:
            if e.ndim != 4 or e.shape[0] != len(self.generators):
                raise ValueError(f"NoiseRegularizer has {len(self.generators)} generators, got noise of shape "
                                 f"{tuple(e.shape)}; expected (B, C, H, W) with B = {len(self.generators)}")
            sizes = _pyramid_sizes(e.shape[-2], e.shape[-1])
            self._workspace = (key, _Shifts(e.shape[0], e.shape[1], sizes, self.rolls),
                               _AutoCorrelation(e.shape, self.rolls, e.dtype, e.device) if self.rolls else None)
        return self._workspace[1], self._workspace[2]

    def __call__(self, e: Tensor, reference: Tensor) -> Tensor:
        if self.reg_steps == 0:
            return e
        shifts, autocorrelation = self._prepared(e)
        if self.lambda_kl > 0:  # the reference is fixed: its patch statistics once per call
            ref_mean, _, ref_var = _patch_moments(_patch_values(reference, self.patch))
            ref_var_eps = ref_var + KL_EPSILON
        if self.rolls:
            autocorrelation.set_shifts(shifts.draw(self.generators).to(e.device))
        roll = 0
        for _ in range(self.reg_steps):
            if self.lambda_kl > 0:
                grad = _patch_kl_grad(e, ref_mean, ref_var_eps, self.patch).clamp_(-KL_CLIP, KL_CLIP)
                e = _descend(e, grad, self.lambda_kl, self.nan_guard)
            if self.rolls:
                autocorrelation.load(e)
                for _ in range(self.ac_rolls):
                    autocorrelation.descend(roll, self.lambda_ac / self.ac_rolls, self.nan_guard)
                    roll += 1
                e = autocorrelation.unload()
        return e


def regularize_noise(e: Tensor, reference: Tensor, generator: torch.Generator, *, lambda_kl: float,
                     lambda_ac: float, reg_steps: int, ac_rolls: int, nan_guard: bool) -> Tensor:
    """The ReNoise noise regulariser on one image's noise (C, H, W); see ``NoiseRegularizer``."""
    regularizer = NoiseRegularizer([generator], lambda_kl=lambda_kl, lambda_ac=lambda_ac, reg_steps=reg_steps,
                                   ac_rolls=ac_rolls, nan_guard=nan_guard)
    return regularizer(e[None], reference[None])[0]


def renoise(eps: EpsFn, z0: Tensor, sched: Schedule, *, K: NonNegativeInt = 1, max_first: NonNegativeInt = 5,
            first_timestep: NonNegativeInt = 250, first_range: tuple[NonNegativeInt, NonNegativeInt] = (0, 5),
            step_range: tuple[NonNegativeInt, NonNegativeInt] = (8, 10), average: bool = True,
            lambda_kl: NonNegativeFloat = 0.065, lambda_ac: NonNegativeFloat = 20.0, reg_steps: NonNegativeInt = 4,
            ac_rolls: NonNegativeInt = 5, nan_guard: bool = False, seed: int = 0, callback: Callback = None,
            disable: bool = True) -> Tensor:
    if reg_steps > 0 and z0.ndim != 4:
        raise ValueError(f"renoise's noise regulariser needs image latents (B, C, H, W), got shape "
                         f"{tuple(z0.shape)}; use reg_steps=0")
    regularize = NoiseRegularizer([torch.Generator().manual_seed(seed) for _ in range(z0.shape[0])],
                                  lambda_kl=lambda_kl, lambda_ac=lambda_ac, reg_steps=reg_steps, ac_rolls=ac_rolls,
                                  nan_guard=nan_guard)

    z = z0
    for i in levels(sched, disable=disable, desc="renoise"):
        early = sched.timesteps[i] < first_timestep
        start, stop = first_range if early else step_range
        iterations = min(max_first, K) if early else K
        reference = noise_of(eps(z0, i)) if reg_steps > 0 else None
        estimate, mean = z, None
        for k in range(iterations + 1):
            noise = noise_of(eps(estimate, i))  # averaged and regularised below: the noise alone
            if start <= k < stop:
                j = k - start
                mean = noise if mean is None else (j * mean + noise) / (j + 1)
            if k >= start or (not average and k > 0):
                noise = regularize(noise, reference)
            evaluated, estimate = estimate, transfer(sched, i - 1, i, z, noise)
        if average and mean is not None:
            estimate = transfer(sched, i - 1, i, z, regularize(mean, reference))
        if callback is not None:
            callback({"i": i, "z_prev": z, "z": estimate, "estimate": evaluated})
        z = estimate
    return z

"""The auto-correlation term's levels as polyphase planes, so that a whole pyramid is a few batched ops.

A level of size (hc 2^m, wc 2^m), m levels above the coarsest (hc, wc) of a run of exact halvings, is
stored as its 4^m polyphase planes ``plane[p, q][i, j] = level[i 2^m + p, j 2^m + q]`` (hc x wc each),
all levels' planes side by side. Then every level is made of rows of the same ``wc`` values:

- 2 x 2 average pooling adds 4 planes into one, and in the Z-order of ``morton`` those 4 are consecutive
  (``PolyphaseRun.pool_levels``);
- rolling a level by s along H or W moves each row of a plane to a row of another plane, cyclically
  shifted within its ``wc`` values. With the planes doubled in width every such row is a window of
  ``wc`` consecutive values, so all levels' four rolls are one gather of rows (``roll_tables`` say which
  rows, per level and shift);

and channels, images and levels share every other operation too.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import torch
from torch import Tensor


def morton(phase_h: Tensor, phase_w: Tensor, bits: int) -> Tensor:
    """Z-order index of a plane: base-4 digits ``2 h_k + w_k`` of its phases' bits, most significant first.

    In this order the 4 planes that 2 x 2 average pooling adds into one plane of the level below are
    consecutive, for every level.
    """
    index = torch.zeros_like(phase_h + phase_w)
    for k in range(bits):
        index = index + (((phase_h >> k) & 1) * 2 + ((phase_w >> k) & 1)) * 4 ** k
    return index


def _plane_counts(depth: int) -> tuple[list[int], list[int]]:
    """Planes per level (4^m for the level m halvings above the coarsest) and each level's first plane."""
    counts = [4 ** (depth - j) for j in range(depth + 1)]
    return counts, list(itertools.accumulate(counts, initial=0))


@lru_cache(maxsize=16)
def roll_tables(sizes: tuple[tuple[int, int], ...]) -> tuple[Tensor, ...]:
    """Where each rolled row of a ``PolyphaseRun`` comes from, per level and possible shift.

    Per level an int32 table (shifts, 4, planes * hc): the offset, in one image-channel's block of the
    run's width-doubled planes, of the ``wc`` values that make up each row of the level rolled by
    +s along H, +s along W, -s along H and -s along W.
    """
    depth = len(sizes) - 1
    hc, wc = sizes[-1]
    _, first = _plane_counts(depth)
    row = torch.arange(hc).view(1, 1, 1, hc)
    tables = []
    for j, (height, _) in enumerate(sizes):
        bits = depth - j
        phases = 2 ** bits
        shift = torch.arange(max(height // 2, 1)).view(-1, 1, 1, 1)
        phase_h, phase_w = torch.arange(phases).view(1, phases, 1, 1), torch.arange(phases).view(1, 1, phases, 1)

        def start(plane_h: Tensor, plane_w: Tensor, source_row: Tensor, column: Tensor | int) -> Tensor:
            return ((first[j] + morton(plane_h, plane_w, bits)) * hc + source_row) * (2 * wc) + column

        kinds = []
        for moved_by in (-shift, shift):  # roll(n, s)[x] = n[x - s]; roll(n, -s)[x] = n[x + s]
            # a phase moved past the last one wraps into the next (or previous) row or column of its plane
            moved = phase_h + moved_by
            kinds.append(start(moved % phases, phase_w, (row + moved.div(phases, rounding_mode="floor")) % hc, 0))
            moved = phase_w + moved_by
            kinds.append(start(phase_h, moved % phases, row, moved.div(phases, rounding_mode="floor") % wc))
        # output rows in the planes' order: Z-order of (phase_h, phase_w), then row
        order = morton(phase_h, phase_w, bits).flatten().argsort()
        shape = (len(shift), phases, phases, hc)
        table = torch.stack([kind.expand(shape) for kind in kinds], 1).reshape(len(shift), 4, phases * phases, hc)
        tables.append(table[:, :, order].reshape(len(shift), 4, -1).int())
    return tuple(tables)


def _mixing(sizes: tuple[tuple[int, int], ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """(planes, planes): from each plane's sum of ``n * roll(n, s)`` to each plane's ``2 m / N``, with ``m`` the
    mean over the plane's level. The block sums are undone here: a level's sums carry 16^j, the rolls they
    multiply 4^j."""
    counts, _ = _plane_counts(len(sizes) - 1)
    level = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(counts))
    scale = torch.tensor([2.0 / (h * w) ** 2 / 64 ** j for j, (h, w) in enumerate(sizes)], dtype=torch.float64)
    return ((level[:, None] == level[None, :]) * scale[level]).to(dtype=dtype, device=device)


class PolyphaseRun:
    """Auto-correlation terms of pyramid levels that each halve the one above exactly, for a batch (B, C).

    Planes hold block sums (level j of the run times 4^j: pooling without its 1/4), the factors going
    into ``mixing``. ``grad`` holds each level's gradient and, after ``accumulate``, the top level's
    gradient of the whole run. All buffers are made once, for one shape.
    """

    def __init__(self, sizes: tuple[tuple[int, int], ...], batch: int, channels: int, rolls: int,
                 dtype: torch.dtype, device: torch.device):
        self.sizes, self.depth = sizes, len(sizes) - 1
        self.hc, self.wc = sizes[-1]
        self.batch, self.channels = batch, channels
        self.counts, self.first = _plane_counts(self.depth)
        self.n_planes = self.first[-1]
        self._make_term_buffers(dtype, device)
        self.mixing = _mixing(sizes, dtype, device)
        self._make_pooling_views()
        self._make_gather_buffers(rolls, device)
        self._make_layout_maps(device)

    def _make_term_buffers(self, dtype: torch.dtype, device: torch.device) -> None:
        """The planes, their rolls, products, sums and gradients, and the views ``level_gradients`` works in.

        The planes doubled in width and the products of the rolls share one buffer (used one after the
        other), as the working set has to stay in a core's cache.
        """
        batch, channels, n_planes, hc, wc = self.batch, self.channels, self.n_planes, self.hc, self.wc
        images = batch * channels

        def buffer(*shape: int) -> Tensor:
            return torch.empty(*shape, dtype=dtype, device=device)

        self.planes = buffer(batch, channels, n_planes, hc, wc)
        scratch = buffer(images * n_planes * hc * 2 * wc)
        self.doubled = scratch.view(batch, channels, n_planes, hc, 2 * wc)
        # every run of wc consecutive values of ``doubled``: row r rolled by c is the run starting at r 2wc + c
        self.windows = scratch.as_strided((scratch.numel() - wc + 1, wc), (1, 1))
        self.rolled = buffer(batch, channels, 4, n_planes, hc, wc)  # +s along H, +s along W, -s along H, -s along W
        self.rolled_rows = self.rolled.view(-1, wc)
        self.ahead, self.behind = self.rolled[:, :, :2], self.rolled[:, :, 2:]
        self.products = scratch.view(batch, channels, 2, n_planes, hc, wc)
        self.product_rows = scratch.view(images * 2, n_planes, hc * wc)
        self.sums = buffer(images * 2, n_planes)
        self.coefficients = buffer(images * 2, n_planes)
        coefficients = self.coefficients.view(batch, channels, 2, n_planes, 1, 1)
        self.terms = [(self.ahead[:, :, axis], coefficients[:, :, axis]) for axis in (0, 1)]  # ahead + behind, after
        self.grad = buffer(batch, channels, n_planes, hc, wc)

    def _make_pooling_views(self) -> None:
        """Views for pooling down the run (4 consecutive fine planes into one coarse plane) and for its
        adjoint back up (a quarter of each coarse value to the 4 planes it pools), coarsest level first."""
        counts, first = self.counts, self.first
        self.pool, self.adjoint = [], []
        for j in range(self.depth):
            fine = (slice(None), slice(None), slice(first[j], first[j + 1]))
            coarse = (slice(None), slice(None), slice(first[j + 1], first[j + 2]))
            self.pool.append((self.planes[fine].unflatten(2, (counts[j + 1], 4)).flatten(-2),
                              self.planes[coarse].flatten(-2)))
            self.adjoint.insert(0, (self.grad[fine].unflatten(2, (counts[j + 1], 4)).flatten(-2),
                                    self.grad[coarse].flatten(-2)[:, :, :, None]))
        self.top, self.top_grad = self.planes[:, :, :counts[0]], self.grad[:, :, :counts[0]]
        self.coarsest, self.coarsest_grad = self.planes[:, :, -1], self.grad[:, :, -1]

    def _make_gather_buffers(self, rolls: int, device: torch.device) -> None:
        """Rows to gather per roll: each level's ``roll_tables`` rows for the drawn shifts, joined, then offset
        to each image-channel's block of ``doubled``."""
        images, rows = self.batch * self.channels, 4 * self.n_planes * self.hc

        def buffer(*shape: int) -> Tensor:
            return torch.empty(*shape, dtype=torch.int32, device=device)

        self.tables = [table.to(device) for table in roll_tables(self.sizes)]
        self.level_starts = [buffer(rolls * images, 4, table.shape[-1]) for table in self.tables]
        self.joined_starts = buffer(rolls, images, rows)
        block = self.n_planes * self.hc * 2 * self.wc
        self.image_offsets = (torch.arange(images, dtype=torch.int32, device=device) * block).view(1, -1, 1)
        self.starts = buffer(rolls, images, rows)
        self.roll_starts = self.starts.view(rolls, -1).unbind(0)

    def _make_layout_maps(self, device: torch.device) -> None:
        """Shapes and orders between the top level (B, C, H, W) and its planes.

        Loading views the level as (B, C, hc, h bits, wc, w bits) and copies it into the planes as (B, C, h
        and w bits alternating, hc, wc), most significant bits first, in one copy. Unloading puts the planes
        in row-major order of their phases first, then copies once: a copy straight to the level is several
        times slower, its innermost loop being 2 long.
        """
        batch, channels, depth, hc, wc = self.batch, self.channels, self.depth, self.hc, self.wc
        bits = list(range(depth))
        self.natural_bits = (batch, channels, hc, *[2] * depth, wc, *[2] * depth)
        self.top_bits = self.top.unflatten(2, [2] * (2 * depth)) if depth else self.top[:, :, 0]
        self.to_planes = [0, 1, *[d for k in bits for d in (3 + k, 4 + depth + k)], 2, 3 + depth]
        phases = torch.arange(2 ** depth)
        self.row_major = morton(phases.view(-1, 1), phases.view(1, -1), depth).flatten().to(device)
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
        """The run's coarsest level itself (its plane holds block sums)."""
        return self.coarsest * 0.25 ** self.depth

    def pool_levels(self) -> None:
        """Every level below the top from the one above (as block sums)."""
        for fine, coarse in self.pool:
            torch.sum(fine, 3, out=coarse)

    def level_gradients(self, roll: int) -> None:
        """Each level's own term ``2 m (roll(n, s) + roll(n, -s)) / N``, both axes, into ``grad``."""
        torch.cat([self.planes, self.planes], -1, out=self.doubled)
        torch.index_select(self.windows, 0, self.roll_starts[roll], out=self.rolled_rows)  # the four rolls
        torch.mul(self.ahead, self.planes[:, :, None], out=self.products)  # n * roll(n, s), overwriting doubled
        torch.sum(self.product_rows, -1, out=self.sums)
        torch.mm(self.sums, self.mixing, out=self.coefficients)  # 2 m / N per plane and axis
        self.ahead.add_(self.behind)
        (both_h, coefficient_h), (both_w, coefficient_w) = self.terms
        torch.mul(both_h, coefficient_h, out=self.grad)
        self.grad.addcmul_(both_w, coefficient_w)

    def accumulate(self) -> None:
        """Each level's gradient into the levels above, through the adjoint of pooling: then ``top_grad`` is
        the whole run's."""
        for fine, coarse in self.adjoint:
            fine.add_(coarse, alpha=0.25)

    def add_upsampled(self, grad: Tensor) -> None:
        """Add the adjoint of 2 x 2 average pooling (cropping odd sizes) of the next run's top ``grad`` to
        this run's coarsest level."""
        h, w = grad.shape[-2:]
        target = self.coarsest_grad[..., :2 * h, :2 * w].unflatten(-1, (w, 2)).unflatten(-3, (h, 2))
        target.add_(grad[:, :, :, None, :, None], alpha=0.25)

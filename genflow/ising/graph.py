"""Sparse Ising graphs of the Denoising Thermodynamic Model: a SIDE x SIDE torus with jump couplings.

Every site (row r, column c) is a spin. A jump (dx, dy) with dx + dy odd couples each site to the
four sites at the jump's rotations (dx, dy), (-dy, dx), (-dx, -dy), (dy, -dx), wrapping around the
torus, so the degree is 4 x (number of jumps). Because every offset has odd length, every edge joins
the two colours of the chessboard colouring ((r + c) even / odd): the two colours are the two blocks
of block Gibbs sampling.

Packed layout. Each colour holds half of the sites, stored as two SIDE/2 x SIDE/2 sub-lattices of
equal (row, column) parity: colour 0 = parities (0, 0) and (1, 1), colour 1 = (0, 1) and (1, 0).
Sub-lattice site (i, j) of parity (r0, c0) is grid site (2i + r0, 2j + c0). A coupling offset
(a, b) from a site of parity (r0, c0) lands on parity ((r0 + a) % 2, (c0 + b) % 2) at sub-lattice
position (i + (r0 + a) // 2, j + (c0 + b) // 2): a constant shift, so a colour's field is a sum of
shifted copies of the other colour's two sub-lattices (a stencil), and no work is spent on sites of
the colour that is not being updated. Couplings are stored on colour-0 sites: weight[q, o] is the
coupling between colour-0 sub-lattice q's sites and their neighbour at offset o (each undirected
edge exactly once).

Presets are named SIDE_DEGREE (``"44_12"``, ``"80_12"``, ...); jump sets follow the reference DTM
implementation (thrmlDenoising), including its wide sets from degree 36 up (and its 80_24).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from genflow.errors import ConfigError

__all__ = ["JUMP_SETS", "PRESETS", "TorusGraph", "jump_set", "parse_preset", "smallest_preset_for"]

_BASE = ((0, 1), (4, 1), (10, 9), (11, 14), (23, 6), (3, 28))
_WIDE = ((0, 1), (6, 1), (12, 5), (11, 14), (23, 6), (3, 28), (6, 33), (20, 35), (34, 29), (47, 20), (4, 5), (2, 9),
         (1, 14), (17, 8), (8, 21), (11, 26), (21, 24), (31, 18), (23, 34))
JUMP_SETS: dict[int, tuple[tuple[int, int], ...]] = {
    4: _BASE[:1],
    8: _BASE[:2],
    12: _BASE[:3],
    16: _BASE[:4],
    20: _BASE[:5],
    24: _BASE[:6],
    32: _BASE[:6] + _WIDE[6:8],
    36: _WIDE[:9],
    40: _WIDE[:10],
    44: _WIDE[:11],
    48: _WIDE[:12],
    52: _WIDE[:13],
    60: _WIDE[:15],
    76: _WIDE[:19],
}
# presets whose jump set differs from the degree's usual one in the reference's table
_SIDE_JUMP_SETS: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {(80, 24): _WIDE[:6]}


def jump_set(side: int, degree: int) -> tuple[tuple[int, int], ...]:
    """The jumps of preset SIDE_DEGREE (the reference's table; its 80_24 starts from the wide set)."""
    return _SIDE_JUMP_SETS.get((side, degree), JUMP_SETS[degree])
# The presets of the reference implementation the issue names; any SIDE_DEGREE with a jump set works.
PRESETS = ("20_8", "44_12", "50_12", "60_12", "70_12", "80_12", "90_12", "100_40", "120_36")


def parse_preset(name: str | int) -> tuple[int, int]:
    """``"80_12"`` -> (80, 12), with a clear error for anything else. The reference's integer keys
    (8012, 208, 12036: side and degree written together) are read too."""
    if isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
        text = str(name)
        split = len(text) - 2 if len(text) > 2 and text[-2] != "0" and int(text[-2:]) in JUMP_SETS else len(text) - 1
        name = f"{text[:split]}_{text[split:]}"
    try:
        side_text, degree_text = str(name).split("_")
        side, degree = int(side_text), int(degree_text)
    except ValueError:
        raise ConfigError(f"graph preset '{name}': expected SIDE_DEGREE such as 44_12 or 80_12 "
                          f"(presets: {', '.join(PRESETS)})") from None
    if degree not in JUMP_SETS:
        raise ConfigError(f"graph preset '{name}': no jump set of degree {degree} "
                          f"(degrees: {', '.join(map(str, sorted(JUMP_SETS)))})")
    return side, degree


def smallest_preset_for(num_visible: int) -> str | None:
    """The smallest named preset whose colour-0 half holds `num_visible` nodes (side² > 2 x visible)."""
    fitting = [p for p in PRESETS if parse_preset(p)[0] ** 2 > 2 * num_visible]
    return min(fitting, key=lambda p: parse_preset(p)) if fitting else None


def _rotations(dx: int, dy: int) -> list[tuple[int, int]]:
    return [(dx, dy), (-dy, dx), (-dx, -dy), (dy, -dx)]


# Sub-lattice parities (r0, c0) of each colour, in packed order.
SUBLATTICES = (((0, 0), (1, 1)), ((0, 1), (1, 0)))


@dataclass(frozen=True)
class StencilTerm:
    """One neighbour term of a colour's field: other colour's sub-lattice `source` shifted by (di, dj)."""

    source: int
    di: int
    dj: int


class TorusGraph:
    """A SIDE x SIDE torus with the jump couplings of `degree` (see the module docstring)."""

    def __init__(self, side: int, degree: int):
        if degree not in JUMP_SETS:
            raise ConfigError(f"graph degree {degree}: no jump set (degrees: {', '.join(map(str, sorted(JUMP_SETS)))})")
        if side < 4 or side % 2:
            raise ConfigError(f"graph side {side}: expected an even number >= 4 (the torus must be 2-colourable)")
        self.side, self.degree = side, degree
        self.half = side // 2
        self.jumps = jump_set(side, degree)
        self.offsets: list[tuple[int, int]] = [o for jump in self.jumps for o in _rotations(*jump)]
        wrapped = {(a % side, b % side) for a, b in self.offsets}
        if len(wrapped) != degree:
            raise ConfigError(f"graph {side}_{degree}: the torus is too small for its jumps "
                              f"{self.jumps} (offsets coincide after wrapping); use a larger side")

    @classmethod
    def from_preset(cls, name: str) -> "TorusGraph":
        return cls(*parse_preset(name))

    @property
    def name(self) -> str:
        return f"{self.side}_{self.degree}"

    @property
    def num_nodes(self) -> int:
        return self.side * self.side

    @property
    def sites_per_colour(self) -> int:
        return self.num_nodes // 2

    # --- stencil -----------------------------------------------------------------------------------
    @cached_property
    def stencil(self) -> tuple[tuple[tuple[StencilTerm, ...], ...], ...]:
        """stencil[colour][q][o]: where colour-`colour` sub-lattice q's offset o comes from.

        For colour 0, term o is weight offset o. For colour 1, term o of sub-lattice q' is the reverse
        of a colour-0 edge; `reverse_index` says which (q, o) weight it uses.
        """
        out = []
        for colour in (0, 1):
            per_sub = []
            for r0, c0 in SUBLATTICES[colour]:
                terms = []
                for a, b in self.offsets:
                    target = ((r0 + a) % 2, (c0 + b) % 2)
                    terms.append(StencilTerm(SUBLATTICES[1 - colour].index(target), (r0 + a) // 2, (c0 + b) // 2))
                per_sub.append(tuple(terms))
            out.append(tuple(per_sub))
        return tuple(out)

    @cached_property
    def reverse_index(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """reverse_index[q'][o']: the colour-0 weight (q, o) that colour-1 sub-lattice q's term o' uses.

        Colour-1 term o' of sub-lattice q' uses offset -offsets[o'] ... reaching colour-0 sub-lattice
        `source`; the edge is stored there under offset +offsets[o'] reversed, i.e. the offset o with
        offsets[o] == -offsets[o'].
        """
        index = {off: o for o, off in enumerate(self.offsets)}
        out = []
        for q1 in range(2):
            row = []
            for o1, (a, b) in enumerate(self.offsets):
                row.append((self.stencil[1][q1][o1].source, index[(-a, -b)]))
            out.append(tuple(row))
        return tuple(out)

    def colour_one_weights(self, weight0: torch.Tensor) -> torch.Tensor:
        """Couplings seen from colour-1 sites, (2, D, H, H), from the colour-0 storage `weight0`.

        Colour-1 site p' of sub-lattice q' with term o' (offset (a, b), reaching colour-0 site
        p' + shift) shares the edge stored at that colour-0 site under the opposite offset.
        """
        rows = []
        for q1 in range(2):
            terms = []
            for o1 in range(self.degree):
                q0, o0 = self.reverse_index[q1][o1]
                term = self.stencil[1][q1][o1]
                terms.append(torch.roll(weight0[q0, o0], shifts=(-term.di, -term.dj), dims=(0, 1)))
            rows.append(torch.stack(terms))
        return torch.stack(rows)

    # --- grid <-> packed ---------------------------------------------------------------------------
    def colour_of(self, row: int, col: int) -> int:
        return (row + col) % 2

    def packed_position(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(colour, sub-lattice, i, j) of grid site (row, col)."""
        colour = (row + col) % 2
        q = SUBLATTICES[colour].index((row % 2, col % 2))
        return colour, q, row // 2, col // 2

    @cached_property
    def grid_index(self) -> np.ndarray:
        """grid_index[colour] (2, H, H): the row-major grid index (r * side + c) of each packed site."""
        H = self.half
        out = np.empty((2, 2, H, H), dtype=np.int64)
        i, j = np.meshgrid(np.arange(H), np.arange(H), indexing="ij")
        for colour in (0, 1):
            for q, (r0, c0) in enumerate(SUBLATTICES[colour]):
                out[colour, q] = (2 * i + r0) * self.side + (2 * j + c0)
        return out

    def to_grid(self, colour0: torch.Tensor, colour1: torch.Tensor) -> torch.Tensor:
        """Packed (..., 2, H, H) halves -> (..., side * side) in row-major grid order."""
        lead = colour0.shape[:-3]
        flat = torch.empty(*lead, self.num_nodes, dtype=colour0.dtype, device=colour0.device)
        index = torch.as_tensor(self.grid_index, device=colour0.device)
        flat[..., index[0].reshape(-1)] = colour0.reshape(*lead, -1)
        flat[..., index[1].reshape(-1)] = colour1.reshape(*lead, -1)
        return flat

    def from_grid(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., side * side) row-major -> packed colour halves (..., 2, H, H)."""
        index = torch.as_tensor(self.grid_index, device=grid.device)
        lead = grid.shape[:-1]
        return (grid[..., index[0].reshape(-1)].reshape(*lead, 2, self.half, self.half),
                grid[..., index[1].reshape(-1)].reshape(*lead, 2, self.half, self.half))

    # --- edges (reference / analysis) --------------------------------------------------------------
    @cached_property
    def edges(self) -> np.ndarray:
        """(E, 2) grid indices of every undirected edge, colour-0 end first, in weight-storage order
        (sub-lattice q, offset o, i, j) — the order of `weight0.reshape(-1)`."""
        H = self.half
        out = np.empty((2, self.degree, H, H, 2), dtype=np.int64)
        i, j = np.meshgrid(np.arange(H), np.arange(H), indexing="ij")
        for q, (r0, c0) in enumerate(SUBLATTICES[0]):
            r, c = 2 * i + r0, 2 * j + c0
            for o, (a, b) in enumerate(self.offsets):
                out[q, o, ..., 0] = r * self.side + c
                out[q, o, ..., 1] = ((r + a) % self.side) * self.side + (c + b) % self.side
        return out.reshape(-1, 2)

    def dense_couplings(self, weight0: torch.Tensor) -> torch.Tensor:
        """The symmetric (N, N) coupling matrix of colour-0 weights (2, D, H, H), grid order."""
        J = torch.zeros(self.num_nodes, self.num_nodes, dtype=weight0.dtype)
        e = torch.as_tensor(self.edges)
        w = weight0.detach().reshape(-1).cpu()
        J[e[:, 0], e[:, 1]] = w
        J[e[:, 1], e[:, 0]] = w
        return J

    # --- visible nodes -------------------------------------------------------------------------------
    def place_visible(self, num_visible: int, seed: int) -> torch.Tensor:
        """Flat packed colour-0 positions (q * H * H + i * H + j) of `num_visible` visible nodes,
        a random permutation of colour-0 sites seeded by `seed`.

        Needs side² > 2 x visible nodes (a colour-0 site left for latents); otherwise a clear error
        naming the smallest preset that fits.
        """
        self.check_fits(num_visible)
        generator = torch.Generator().manual_seed(int(seed))
        return torch.randperm(self.sites_per_colour, generator=generator)[:num_visible]

    def check_fits(self, num_visible: int) -> None:
        """A clear error naming the smallest preset that fits unless side² > 2 x visible nodes."""
        if self.num_nodes <= 2 * num_visible:
            fits = smallest_preset_for(num_visible)
            hint = f"the smallest preset that fits is {fits}" if fits else "no named preset fits; use a larger SIDE"
            raise ConfigError(f"graph {self.name} is too small for {num_visible} visible nodes "
                              f"(needs side² > 2 x {num_visible} = {2 * num_visible}, has {self.num_nodes}); {hint}")

    def place_reference(self, num_image: int, num_other: int, seed: int) -> torch.Tensor:
        """The layout the reference implementation (thrmlDenoising) actually builds, as flat packed
        colour-0 positions: image nodes first, then the `num_other` label nodes.

        It numbers the colour-0 sites in row-major grid order (0 .. side²/2 - 1), draws a random
        permutation of all but the last of them, gives the first `num_image` to the image and the
        next `num_other` to the labels, and then hands the sites to the nodes in the iteration order of
        a Python set of those numbers (reproduced here with a Python set). CPython iterates a set of
        small integers in (nearly) ascending order, so pixel p of a raster-ordered image lands on about
        the p-th chosen site in grid order: consecutive pixels sit on nearby sites and image rows stay
        rows. The sites themselves come from torch's generator seeded by `seed` (the
        reference draws them with JAX's), so the layout is the reference's kind, not its exact sites.
        """
        self.check_fits(num_image + num_other)
        generator = torch.Generator().manual_seed(int(seed))
        chosen = torch.randperm(self.sites_per_colour - 1, generator=generator)[: num_image + num_other].tolist()
        order = list(set(chosen[:num_image])) + list(set(chosen[num_image:]))  # the reference's set iteration
        grid_of_site = np.sort(self.grid_index[0].reshape(-1))  # colour-0 site number -> row-major grid index
        packed_of_grid = {int(g): p for p, g in enumerate(self.grid_index[0].reshape(-1))}
        return torch.tensor([packed_of_grid[int(grid_of_site[u])] for u in order], dtype=torch.long)

    def place_image(self, image_shape: tuple[int, ...], spins_per_pixel: int, num_other: int, seed: int) -> torch.Tensor:
        """Like `place_visible`, but the image nodes keep the image's layout: pixel (row, col) of an
        (H, W, ...) image goes to the free colour-0 site nearest (on the torus) to its position scaled
        to the torus, ((row + ½) SIDE / H, (col + ½) SIDE / W); the nodes of one pixel (channels,
        thermometer spins: flat order pixel x spins_per_pixel) go to neighbouring sites. Pixels next to
        each other in the image then share latent neighbours through the graph's short jumps. The
        `num_other` remaining visible nodes (labels) take a seeded random choice of the free sites.
        Nodes are placed in a seeded random order, so no image region is systematically displaced.
        """
        num_image = int(np.prod(image_shape)) * spins_per_pixel
        self.check_fits(num_image + num_other)
        rows, cols = image_shape[0], image_shape[1] if len(image_shape) > 1 else 1
        per_position = num_image // (rows * cols)
        node = np.arange(num_image)
        position = node // per_position
        target = np.stack([(position // cols + 0.5) * self.side / rows, (position % cols + 0.5) * self.side / cols], 1)
        site_grid = self.grid_index[0].reshape(-1)  # flat packed colour-0 order -> row-major grid index
        site = np.stack([site_grid // self.side, site_grid % self.side], 1).astype(np.float64)
        rng = np.random.default_rng(int(seed))
        free = np.ones(len(site), dtype=bool)
        placed = np.empty(num_image + num_other, dtype=np.int64)
        for n in rng.permutation(num_image):
            delta = np.abs(site - target[n])
            delta = np.minimum(delta, self.side - delta)
            distance = (delta ** 2).sum(1) + rng.random(len(site)) * 1e-6  # random tie-break
            distance[~free] = np.inf
            placed[n] = int(np.argmin(distance))
            free[placed[n]] = False
        placed[num_image:] = rng.permutation(np.flatnonzero(free))[:num_other]
        return torch.from_numpy(placed)

"""Tetrahedral grids for DMTet: a cube lattice split into tetrahedra (our own generator, no Quartet).

A grid of *resolution* ``R`` (even, e.g. 32 / 64 / 128, the names of threestudio's shipped grids) is a lattice of
``n = R / 2`` cubes per side over ``[-0.5, 0.5]^3``, so ``(n + 1)^3`` vertices, and every cube is split into the six
tetrahedra of the Freudenthal (Kuhn) subdivision: one per permutation ``(a, b, c)`` of the axes, along the path
``corner 000 -> + e_a -> + e_b -> + e_c = corner 111``. All cubes use the same diagonal, so neighbouring cubes
agree on their shared faces and the tetrahedra form a conforming mesh. Sizes: 32 -> 4,913 vertices / 24,576 tets,
64 -> 35,937 / 196,608, 128 -> 274,625 / 1,572,864 (close to the Quartet grids of the same names). Every
tetrahedron is positively oriented: ``det(v1 - v0, v2 - v0, v3 - v0) > 0``.

The same lattice serves FlexiCubes (:func:`cube_corners` gives each cube's 8 corner indices), so one set of
per-vertex SDF values can be meshed either way.

Grids are cached as ``load/tets/<R>_tets.npz`` (keys ``vertices`` [N, 3] float32 and ``indices`` [T, 4] int64, as
threestudio's files) under the repository root, generated on first use; the cache is an optimisation only.
"""

from __future__ import annotations

import itertools
import os
from typing import Optional, Tuple

import numpy as np
import torch

from threestudio.utils.log import info, warn

# corner c of a cube is at offset (c & 1, (c >> 1) & 1, (c >> 2) & 1)
CORNER_OFFSETS = torch.tensor([[(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=torch.long)


def _check_resolution(resolution: int) -> int:
    if not isinstance(resolution, (int, np.integer)) or resolution < 2 or resolution % 2:
        raise ValueError(f"tet grid resolution must be an even integer >= 2 (e.g. 32, 64, 128), got {resolution!r}")
    return int(resolution) // 2


def lattice_vertices(n: int) -> torch.Tensor:
    """The (n + 1)^3 lattice points [(n + 1)^3, 3] over [-0.5, 0.5]^3; vertex (i, j, k) has index
    ``(i * (n + 1) + j) * (n + 1) + k`` (x slowest)."""
    g = torch.linspace(-0.5, 0.5, n + 1, dtype=torch.float64)
    x, y, z = torch.meshgrid(g, g, g, indexing="ij")
    return torch.stack([x, y, z], -1).reshape(-1, 3).float()


def cube_corners(n: int) -> torch.Tensor:
    """[n^3, 8] vertex indices of every cube's corners (corner ``c`` at offset ``(c&1, c>>1&1, c>>2&1)``); cube
    (i, j, k) has index ``(i * n + j) * n + k``."""
    i, j, k = torch.meshgrid(torch.arange(n), torch.arange(n), torch.arange(n), indexing="ij")
    base = torch.stack([i, j, k], -1).reshape(-1, 1, 3) + CORNER_OFFSETS[None]
    return (base[..., 0] * (n + 1) + base[..., 1]) * (n + 1) + base[..., 2]


def kuhn_tets(n: int) -> torch.Tensor:
    """[6 n^3, 4] positively oriented tetrahedra of the Freudenthal split of every cube."""
    corners = cube_corners(n)  # [C, 8]
    local = []
    for perm in itertools.permutations(range(3)):
        path = [0]
        c = 0
        for axis in perm:
            c |= 1 << axis
            path.append(c)
        local.append(path)
    local_t = torch.tensor(local, dtype=torch.long)  # [6, 4]
    # orient the 6 local tets positively on the unit cube once (the same for every cube)
    off = CORNER_OFFSETS.double()
    for r in range(6):
        a, b, c, d = (off[i] for i in local_t[r])
        if torch.det(torch.stack([b - a, c - a, d - a])) < 0:
            local_t[r, [2, 3]] = local_t[r, [3, 2]]
    return corners[:, local_t].reshape(-1, 4)


def generate_tet_grid(resolution: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(vertices [N, 3] float32 in [-0.5, 0.5]^3, tets [T, 4] int64) of a grid of this resolution."""
    n = _check_resolution(resolution)
    return lattice_vertices(n), kuhn_tets(n)


def default_cache_dir() -> str:
    from threestudio.utils.extensions import REPO_ROOT

    return os.path.join(REPO_ROOT, "load", "tets")


def load_tet_grid(resolution: int, cache_dir: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The grid of ``resolution``, from ``<cache_dir>/<R>_tets.npz`` if present and valid, else generated (and
    written there when the folder is writable). ``cache_dir`` defaults to ``load/tets`` under the repository."""
    n = _check_resolution(resolution)
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, f"{resolution}_tets.npz")
    expect_v, expect_t = (n + 1) ** 3, 6 * n**3
    if os.path.isfile(path):
        try:
            with np.load(path) as data:
                v, t = torch.from_numpy(data["vertices"]).float(), torch.from_numpy(data["indices"]).long()
            if v.shape == (expect_v, 3) and t.shape == (expect_t, 4):
                return v, t
            warn(f"{path} holds a grid of another layout ({v.shape[0]} vertices, {t.shape[0]} tets; ours has "
                 f"{expect_v} / {expect_t}); regenerating it.")
        except Exception as e:  # a corrupt cache is regenerated
            warn(f"could not read the tet grid cache {path} ({e}); regenerating it.")
    v, t = generate_tet_grid(resolution)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + f".tmp-{os.getpid()}.npz"
        np.savez(tmp, vertices=v.numpy(), indices=t.numpy())
        os.replace(tmp, path)
        info(f"Generated the tet grid {path} ({v.shape[0]} vertices, {t.shape[0]} tets)")
    except OSError as e:
        warn(f"could not cache the tet grid at {path} ({e}); it will be generated again next time.")
    return v, t

"""Ray/box intersection and an occupancy grid for empty-space skipping (instant-ngp / nerfacc style).

:class:`OccupancyGrid` keeps one level of ``res_x * res_y * res_z`` cells over an axis-aligned box ``aabb`` =
(xmin, ymin, zmin, xmax, ymax, zmax), cell (i, j, k) covering ``aabb_min + [i, i+1) * cell_size`` (x major, the
layout of ``nerfacc.OccGridEstimator.binaries[0]``). Its state is two buffers that move with ``.to()`` and live in the
``state_dict``: ``occs`` (an EMA of the occupancy value per cell, float32 [cells]) and ``binaries`` (bool
[res_x, res_y, res_z]). A new grid is all empty; ``update`` fills it (every cell during warm-up), or write
``binaries`` directly.

Sampling (``OccupancyGrid.sample``) marches along each ray with a fixed step from the near plane, exactly as
nerfacc's ``traverse_grids`` does: sample k spans [t_k, t_k+1] with t_k = near (+ U[0, step) if stratified) + k step
(with ``cone_angle`` > 0, the step grows to ``t * cone_angle`` once that exceeds the base step); a sample is kept iff
its midpoint lies inside [max(t_near, near), min(t_far, far)) of the box and in an occupied cell. Backends:

* ``"torch"``: computes every candidate sample's index range per ray in closed form, expands them in memory-bounded
  chunks of rays (``chunk_samples`` candidates at a time) and filters by a grid lookup. Runs anywhere.
* ``"nerfacc"``: ``nerfacc.grid.traverse_grids`` (the CUDA kernel behind ``nerfacc.OccGridEstimator.sampling``) over
  this grid's own ``binaries``/``aabb``, so both backends always see the same grid. CUDA only.
* ``"auto"``: nerfacc on CUDA when its extension builds/loads, else torch.

With ``stratified=False`` both give the same samples up to float rounding of t (nerfacc accumulates t by repeated
float32 addition), so a sample whose midpoint lies within rounding of a cell face may be kept by one and not the other.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch

from threestudio.ops.volume_rendering import render_weight_from_density, resolve_backend, segment_start_index

Tensor = torch.Tensor


def _aabb_tensor(aabb: Union[Tensor, Sequence[float]], like: Optional[Tensor] = None) -> Tensor:
    a = torch.as_tensor(aabb, dtype=torch.float32) if not isinstance(aabb, Tensor) else aabb
    a = a.reshape(6)
    return a.to(like.device, like.dtype) if like is not None else a.float()


def ray_aabb_intersect(
    rays_o: Tensor, rays_d: Tensor, aabb: Union[Tensor, Sequence[float]]
) -> Tuple[Tensor, Tensor, Tensor]:
    """Slab test of rays against one box.

    Args:
        rays_o, rays_d: [..., 3] (rays_d need not be normalised; t is in units of |rays_d|).
        aabb: [6] (xmin, ymin, zmin, xmax, ymax, zmax) or [2, 3].
    Returns:
        t_near [...], t_far [...] (t_near < 0 when the origin is inside the box; both +inf where missed) and
        hit [...] bool: the ray's half-line t > 0 crosses the box over a non-empty interval.
    """
    a = _aabb_tensor(aabb, rays_o)
    lo, hi = a[:3], a[3:]
    parallel = rays_d == 0
    inv = 1.0 / torch.where(parallel, torch.ones_like(rays_d), rays_d)
    t0 = (lo - rays_o) * inv
    t1 = (hi - rays_o) * inv
    inside_slab = (rays_o >= lo) & (rays_o <= hi)
    inf = torch.full_like(t0, math.inf)
    tmin_axis = torch.where(parallel, torch.where(inside_slab, -inf, inf), torch.minimum(t0, t1))
    tmax_axis = torch.where(parallel, torch.where(inside_slab, inf, -inf), torch.maximum(t0, t1))
    t_near = tmin_axis.amax(dim=-1)
    t_far = tmax_axis.amin(dim=-1)
    hit = (t_far > t_near) & (t_far > 0)
    miss = torch.full_like(t_near, math.inf)
    return torch.where(hit, t_near, miss), torch.where(hit, t_far, miss), hit


def _nonzero_known_count(mask: Tensor, count: int) -> Tensor:
    """Indices [count] of the True entries of a 1-D ``mask`` known to hold exactly ``count`` of them. On CUDA,
    ``nonzero_static`` needs no host synchronisation (``nonzero`` must read the count back first)."""
    if mask.is_cuda and hasattr(torch, "nonzero_static"):
        return torch.nonzero_static(mask, size=count)[:, 0]
    return torch.nonzero(mask)[:, 0]


# ----------------------------------------------------------------------------------------------------------------------
# Marching lattice: t_k, midpoints, and the inverse (which k has its midpoint just past t)
# ----------------------------------------------------------------------------------------------------------------------


class _Lattice:
    """Sample starts t_k = near + k*step, switching to geometric growth t_{k+1} = t_k (1 + c) once t_k * c > step.

    All quantities are per ray ([N]) and computed in float64.
    """

    def __init__(self, near: Tensor, step: float, cone_angle: float):
        self.near, self.step, self.c = near, float(step), float(cone_angle)
        if self.c > 0:
            # first k whose t_k * c > step (dt = clamp(t * c, step, 1e10) exceeds the base step)
            k0 = torch.floor((self.step / self.c - near) / self.step) + 1.0
            self.k0 = k0.clamp(min=0.0)
            self.t_k0 = near + self.k0 * self.step
            self.log_g = math.log1p(self.c)

    def t(self, k: Tensor, ray: Tensor) -> Tensor:
        """Start of sample k of ray ``ray`` (float64)."""
        lin = self.near[ray] + k * self.step
        if self.c <= 0:
            return lin
        k0, t0 = self.k0[ray], self.t_k0[ray]
        geo = t0 * torch.exp((k - k0).clamp(min=0.0) * self.log_g)
        return torch.where(k < k0, lin, geo)

    def dt(self, t: Tensor) -> Tensor:
        if self.c <= 0:
            return torch.full_like(t, self.step)
        return (t * self.c).clamp(min=self.step, max=1e10)

    def first_k_with_mid_at_or_after(self, t: Tensor) -> Tensor:
        """Smallest k with mid_k >= t (float64 [N], possibly -inf/inf for infinite t)."""
        k_lin = torch.ceil((t - self.near) / self.step - 0.5)
        if self.c <= 0:
            return k_lin
        # geometric part: mid_k = t_k0 (1+c)^(k-k0) (1 + c/2)
        ratio = (t / (self.t_k0 * (1.0 + 0.5 * self.c))).clamp(min=1e-30)
        k_geo = self.k0 + torch.ceil(torch.log(ratio) / self.log_g).clamp(min=0.0)
        return torch.where(k_lin < self.k0, k_lin, k_geo)


class OccupancyGrid(torch.nn.Module):
    """A binary occupancy grid over a box with an EMA of occupancy values (one level).

    Args:
        aabb: [6] (xmin, ymin, zmin, xmax, ymax, zmax) or [2, 3].
        resolution: cells per axis, an int or (rx, ry, rz).
    """

    def __init__(self, aabb: Union[Tensor, Sequence[float]], resolution: Union[int, Sequence[int]] = 32):
        super().__init__()
        res = (int(resolution),) * 3 if isinstance(resolution, int) else tuple(int(r) for r in resolution)
        if len(res) != 3 or min(res) < 1:
            raise ValueError(f"resolution must be a positive int or three of them, got {resolution}")
        a = _aabb_tensor(aabb).clone()
        if not bool((a[3:] > a[:3]).all()):
            raise ValueError(f"aabb must be (xmin, ymin, zmin, xmax, ymax, zmax) with max > min, got {a.tolist()}")
        self.resolution: Tuple[int, int, int] = res
        self.register_buffer("aabb", a)
        self.register_buffer("occs", torch.zeros(res[0] * res[1] * res[2]))
        self.register_buffer("binaries", torch.zeros(res, dtype=torch.bool))
        self._occs_mean: Optional[float] = None  # mean(occs) on the host, cached between updates (one sync each)

    @property
    def n_cells(self) -> int:
        return self.resolution[0] * self.resolution[1] * self.resolution[2]

    def _res_tensor(self, device) -> Tensor:
        return torch.tensor(self.resolution, device=device)

    def cell_coords(self, indices: Tensor) -> Tensor:
        """Integer cell coordinates [M, 3] of flat cell indices [M] (x major)."""
        _, ry, rz = self.resolution
        return torch.stack([indices // (ry * rz), (indices // rz) % ry, indices % rz], dim=-1)

    def to_grid_units(self, points: Tensor) -> Tensor:
        """Points [..., 3] in grid units: (p - aabb_min) / cell_size, so cell (i, j, k) is [i, i+1) x [j, j+1) x ..."""
        lo, hi = self.aabb[:3].to(points.dtype), self.aabb[3:].to(points.dtype)
        return (points - lo) * (self._res_tensor(points.device).to(points.dtype) / (hi - lo))

    def _flat_index(self, grid_units: Tensor) -> Tensor:
        res = self._res_tensor(grid_units.device)
        ijk = torch.minimum(torch.floor(grid_units).long().clamp(min=0), res - 1)
        _, ry, rz = self.resolution
        return (ijk[..., 0] * ry + ijk[..., 1]) * rz + ijk[..., 2]

    def cell_index(self, points: Tensor) -> Tensor:
        """Flat index [...] of the cell containing each point [..., 3] (points outside are clamped to the border)."""
        return self._flat_index(self.to_grid_units(points))

    def query(self, points: Tensor) -> Tensor:
        """Occupancy [...] (bool) at points [..., 3]; points outside the box are False."""
        lo, hi = self.aabb[:3].to(points.dtype), self.aabb[3:].to(points.dtype)
        inside = ((points >= lo) & (points <= hi)).all(dim=-1)
        return self.binaries.reshape(-1)[self.cell_index(points)] & inside

    def occs_mean(self) -> float:
        """mean(occs) as a float, read from the device once per grid update rather than at every render."""
        if self._occs_mean is None:
            self._occs_mean = float(self.occs.mean())
        return self._occs_mean

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._occs_mean = None
        super()._load_from_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------------------------------------------------------
    # Update
    # ------------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def update(
        self,
        density_fn: Callable[[Tensor], Tensor],
        step: int,
        occ_thre: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        n: int = 16,
        value_scale: float = 1.0,
        generator: Optional[torch.Generator] = None,
        chunk: int = 1 << 18,
    ) -> bool:
        """Refresh the grid every ``n`` steps (like ``nerfacc.OccGridEstimator.update_every_n_steps``).

        ``density_fn`` maps points [M, 3] to values [M] or [M, 1]; the cell's new value is ``value_scale *
        density_fn(x)`` at one jittered point per cell (threestudio passes ``value_scale = render_step_size`` so that
        the value approximates a sample's opacity). Before ``warmup_steps`` every cell is evaluated; after, a random
        quarter of the cells plus up to as many occupied ones. ``occs = max(ema_decay * occs, value)`` for the
        evaluated cells, then ``binaries = occs > min(occ_thre, mean(occs))``.

        Returns:
            True if the grid was updated at this step.
        """
        if step % n != 0:
            return False
        device = self.occs.device
        if step < warmup_steps:
            indices = torch.arange(self.n_cells, device=device)
        else:
            m = self.n_cells // 4
            uniform = torch.randint(self.n_cells, (m,), device=device, generator=generator)
            occupied = torch.nonzero(self.binaries.reshape(-1))[:, 0]
            if occupied.shape[0] > m:
                pick = torch.randint(occupied.shape[0], (m,), device=device, generator=generator)
                occupied = occupied[pick]
            indices = torch.cat([uniform, occupied])
        coords = self.cell_coords(indices).float()
        jitter = torch.rand(coords.shape, device=device, generator=generator)
        res = self._res_tensor(device).float()
        x = self.aabb[:3] + (coords + jitter) / res * (self.aabb[3:] - self.aabb[:3])
        values = torch.cat([density_fn(x[i : i + chunk]).reshape(-1).float() for i in range(0, x.shape[0], chunk)])
        values = values * value_scale
        occs = self.occs.clone()
        occs[indices] = self.occs[indices] * ema_decay
        occs.scatter_reduce_(0, indices, values, reduce="amax", include_self=True)
        self.occs.copy_(occs)
        self._occs_mean = None
        threshold = torch.clamp(self.occs.mean(), max=occ_thre)
        self.binaries.copy_((self.occs > threshold).reshape(self.resolution))
        return True

    # ------------------------------------------------------------------------------------------------------------------
    # Sampling
    # ------------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        near: float = 0.0,
        far: float = 1e10,
        render_step_size: float = 1e-3,
        stratified: bool = False,
        cone_angle: float = 0.0,
        alpha_thre: float = 0.0,
        sigma_fn: Optional[Callable[[Tensor, Tensor, Tensor], Tensor]] = None,
        max_samples_per_ray: Optional[int] = None,
        early_stop_eps: float = 1e-4,
        backend: str = "auto",
        generator: Optional[torch.Generator] = None,
        chunk_samples: int = 1 << 23,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """March rays through the occupied cells with a fixed step (see the module docstring).

        Args:
            rays_o, rays_d: [N, 3] float32 (rays_d normalised, so that t is a distance).
            near, far: planes along each ray; marching starts at ``near`` (its lattice origin).
            stratified: jitter each ray's lattice origin by U[0, render_step_size).
            cone_angle: > 0 grows the step to ``t * cone_angle``.
            sigma_fn: optional ``(t_starts, t_ends, ray_indices) -> sigmas`` [S]; if given, samples with transmittance
                below ``early_stop_eps`` or alpha below ``min(alpha_thre, mean(occs))`` are dropped (as nerfacc does).
            max_samples_per_ray: keep at most this many (the first) samples per ray.
            chunk_samples: the torch backend expands at most about this many candidate samples at a time.
        Returns:
            ray_indices [S] int64 (non-decreasing), t_starts [S], t_ends [S]; not differentiable.
        """
        if rays_o.dim() != 2 or rays_o.shape[-1] != 3 or rays_d.shape != rays_o.shape:
            raise ValueError(f"rays_o and rays_d must both be [N, 3], got {tuple(rays_o.shape)}, {tuple(rays_d.shape)}")
        n_rays = rays_o.shape[0]
        device = rays_o.device
        near_planes = torch.full((n_rays,), float(near), device=device, dtype=torch.float32)
        if stratified:
            near_planes = near_planes + torch.rand(n_rays, device=device, generator=generator) * render_step_size
        be = resolve_backend(backend, device, "OccupancyGrid.sample")
        if be == "nerfacc":
            ray_indices, t_starts, t_ends = self._sample_nerfacc(
                rays_o, rays_d, near_planes, far, render_step_size, cone_angle, max_samples_per_ray
            )
        else:
            ray_indices, t_starts, t_ends = self._sample_torch(
                rays_o, rays_d, near_planes, far, render_step_size, cone_angle, max_samples_per_ray, chunk_samples
            )
        if sigma_fn is not None and (alpha_thre > 0.0 or early_stop_eps > 0.0) and ray_indices.shape[0] > 0:
            alpha_thre = min(alpha_thre, self.occs_mean())
            sigmas = sigma_fn(t_starts, t_ends, ray_indices).reshape(-1)
            if sigmas.shape != t_starts.shape:
                raise ValueError(
                    f"sigma_fn must return one density per sample ({t_starts.shape[0]}), got {tuple(sigmas.shape)}"
                )
            _, trans, alphas = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays, backend=be)
            keep = trans >= early_stop_eps
            if alpha_thre > 0.0:
                keep = keep & (alphas >= alpha_thre)
            # one nonzero (one host sync) for the three tensors, not one per boolean-mask indexing
            idx = torch.nonzero(keep)[:, 0]
            ray_indices, t_starts, t_ends = ray_indices[idx], t_starts[idx], t_ends[idx]
        return ray_indices, t_starts, t_ends

    def _sample_nerfacc(self, rays_o, rays_d, near_planes, far, step, cone_angle, max_samples_per_ray):
        from threestudio.utils.imports import require

        grid = require("nerfacc.grid", "OccupancyGrid.sample with backend='nerfacc'", "pip install nerfacc==0.5.3")
        far_planes = torch.full_like(near_planes, float(far))
        intervals, samples, _ = grid.traverse_grids(
            rays_o.float().contiguous(),
            rays_d.float().contiguous(),
            self.binaries[None].contiguous(),
            self.aabb[None].float().contiguous(),
            near_planes=near_planes,
            far_planes=far_planes,
            step_size=float(step),
            cone_angle=float(cone_angle),
            traverse_steps_limit=max_samples_per_ray,
        )
        # the sample count is known on the host already, so the interval ends are gathered without a sync
        n = samples.ray_indices.shape[0]
        t_starts = intervals.vals[_nonzero_known_count(intervals.is_left, n)]
        t_ends = intervals.vals[_nonzero_known_count(intervals.is_right, n)]
        return samples.ray_indices.long(), t_starts, t_ends

    def _sample_torch(self, rays_o, rays_d, near_planes, far, step, cone_angle, max_samples_per_ray, chunk_samples):
        device = rays_o.device
        n_rays = rays_o.shape[0]
        t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, self.aabb)
        near64 = near_planes.double()
        t0 = torch.maximum(t_near.double(), near64)
        t1 = torch.clamp(t_far.double(), max=float(far))
        valid = hit & (t0 < t1)
        lattice = _Lattice(near64, step, cone_angle)
        # ray origins and directions in grid units (float32, like nerfacc's traversal)
        o_g = self.to_grid_units(rays_o.double()).float()
        d_g = (rays_d.double() * (self._res_tensor(device).double() / (self.aabb[3:] - self.aabb[:3]).double())).float()
        occupied = self.binaries.reshape(-1)
        zero = torch.zeros_like(t0)
        k_lo = torch.where(valid, lattice.first_k_with_mid_at_or_after(torch.where(valid, t0, zero)), zero)
        k_hi = torch.where(valid, lattice.first_k_with_mid_at_or_after(torch.where(valid, t1, zero)), zero)
        counts = (k_hi - k_lo).clamp(min=0).long()
        empty = (
            torch.zeros(0, dtype=torch.long, device=device),
            torch.zeros(0, device=device),
            torch.zeros(0, device=device),
        )

        # split rays into chunks of about chunk_samples candidates (a single ray larger than that is its own chunk)
        csum = torch.cumsum(counts, 0)
        total = int(csum[-1]) if n_rays > 0 else 0
        if total == 0:
            return empty
        bounds = [0, n_rays]
        if total > chunk_samples:
            cuts = torch.arange(chunk_samples, total, chunk_samples, device=device, dtype=csum.dtype)
            bounds = sorted(set(bounds + torch.searchsorted(csum, cuts, right=True).tolist()))
        out = []
        for r0, r1 in zip(bounds[:-1], bounds[1:]):
            if r1 <= r0:
                continue
            cnt = counts[r0:r1]
            ray = torch.repeat_interleave(torch.arange(r0, r1, device=device), cnt)
            if ray.shape[0] == 0:
                continue
            first = torch.cumsum(cnt, 0) - cnt
            j = torch.arange(ray.shape[0], device=device) - torch.repeat_interleave(first, cnt)
            k = k_lo[ray] + j.double()
            ts = lattice.t(k, ray)
            dt = lattice.dt(ts)
            mid = (ts + 0.5 * dt).float()
            keep = torch.nonzero(occupied[self._flat_index(torch.addcmul(o_g[ray], mid[:, None], d_g[ray]))])[:, 0]
            ts, dt = ts[keep], dt[keep]
            out.append((ray[keep], ts.float(), (ts + dt).float()))
        if not out:
            return empty
        ray_indices = torch.cat([o[0] for o in out])
        t_starts = torch.cat([o[1] for o in out])
        t_ends = torch.cat([o[2] for o in out])
        if max_samples_per_ray is not None:
            rank = torch.arange(ray_indices.shape[0], device=device) - segment_start_index(ray_indices)
            keep = rank < max_samples_per_ray
            ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]
        return ray_indices, t_starts, t_ends

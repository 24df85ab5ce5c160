"""``nerf-volume-renderer``: occupancy-grid ray marching and volume compositing over packed samples.

On CUDA with nerfacc importable, marching and compositing use nerfacc's kernels (JIT-built on first use); elsewhere
our PyTorch implementation of the same operations (``threestudio.ops.occupancy_grid`` and
``threestudio.ops.volume_rendering``). An SDF geometry (no ``density`` output) is rendered through VolSDF's Laplace
density with the geometry's learnable ``beta``. Evaluation renders in chunks of ``eval_chunk_size`` rays, so a 512^2
view fits in memory.

Outputs (leading shape of the rays, e.g. [B, H, W, C]): ``comp_rgb``, ``comp_rgb_fg``, ``comp_rgb_bg``,
``opacity``, ``depth``, ``z_variance``, ``comp_normal`` (world space, when asked or when the material shades with
normals); packed per-sample ``weights``, ``t_points``, ``t_intervals``, ``ray_indices``, ``points``, ``t_dirs``
while training (and ``normal`` when normals are computed, ``sdf_grad`` for SDF geometry with normals).
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

import threestudio
from threestudio.models.geometry.implicit_sdf import laplace_density
from threestudio.models.renderers.base import RenderRequest, VolumeRenderer
from threestudio.models.renderers.schema import NeRFVolumeRendererConfig
from threestudio.ops.occupancy_grid import OccupancyGrid
from threestudio.ops.volume_rendering import composite

class PreparedSamples(NamedTuple):
    samples: Tuple[torch.Tensor, ...]  # ray_indices, t_starts, t_ends
    grid_version: int  # the occupancy grid they were marched through
    stream: Any  # the CUDA stream they were made on (None on the CPU)


IMAGE_KEYS = ("comp_rgb", "comp_rgb_fg", "comp_rgb_bg", "opacity", "depth", "z_variance", "comp_normal")


@threestudio.register("nerf-volume-renderer")
class NeRFVolumeRenderer(VolumeRenderer):
    Config = NeRFVolumeRendererConfig

    cfg: Config

    def configure(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
        super().configure(geometry=geometry, material=material, background=background)
        if self.cfg.backend not in ("auto", "nerfacc", "torch"):
            raise ValueError(f"system.renderer.backend: unknown {self.cfg.backend!r} (auto, nerfacc or torch)")
        r = self.cfg.radius
        self.estimator = OccupancyGrid([-r, -r, -r, r, r, r], resolution=self.cfg.occ_grid_resolution)
        if not self.cfg.grid_prune:
            self.estimator.binaries.fill_(True)
        self.render_step_size = 1.732 * 2 * r / self.cfg.num_samples_per_ray
        self._grid_version = 0  # counts occupancy-grid updates: samples prepared before one are not used
        self._side_stream: Any = None
        self._params_event: Any = None

    # ------------------------------------------------------------------ schedule: occupancy grid refresh
    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        if not (self.cfg.grid_prune and self.training) or self.geometry is None:
            return
        density_fn = self._density_fn()
        if self.estimator.update(
            lambda x: density_fn(x).reshape(-1), step=global_step, occ_thre=self.cfg.occ_threshold,
            ema_decay=self.cfg.occ_ema_decay, warmup_steps=self.cfg.occ_warmup_steps,
            n=self.cfg.occ_update_interval, value_scale=self.render_step_size,
        ):
            self._grid_version += 1

    # ------------------------------------------------------------------ choosing the next step's samples ahead
    def can_prepare_samples(self) -> bool:
        return bool(self.cfg.prefetch_samples) and self.training

    @contextlib.contextmanager
    def prepare_context(self) -> Iterator[None]:
        """Run the block on the renderer's side CUDA stream, ordered after the parameter state of this step's
        forward (a no-op context on the CPU)."""
        if self.device.type != "cuda":
            yield
            return
        if self._side_stream is None:
            # high priority: its small kernels get the SMs ahead of the queued UNet/VAE work, so the sample count it
            # reads back is not held up behind them
            self._side_stream = torch.cuda.Stream(self.device, priority=-1)
        if self._params_event is not None:
            self._side_stream.wait_event(self._params_event)
        with torch.cuda.stream(self._side_stream):
            yield

    def prepare_samples(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> "PreparedSamples":
        """Select the samples of the next training step's rays now; the data stage puts them in that step's
        :class:`RenderRequest`.

        Why: marching the occupancy grid and pruning by opacity must read sample counts back to the host, and on the
        GPU each read waits until all queued work is done; at the start of a step that is the previous step's whole
        backward pass, and the rest of the render then runs with the GPU idle between small kernels. Called during
        step i (after its guidance is queued), this runs on a side stream with the parameters of step i, so its
        waits overlap step i's GPU work and step i+1's forward is queued without one. The price: the opacity pruning
        of step i+1 uses the density before step i's optimizer update (the occupancy grid itself is refreshed only
        every ``occ_update_interval`` steps; samples prepared before a grid refresh are not used). Gradients are
        exact for the samples kept. A run resumed from a checkpoint samples its first step afresh.
        """
        with self.prepare_context():
            samples = self._sample(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
        return PreparedSamples(samples, self._grid_version, self._side_stream)

    def _usable(self, prepared: Optional["PreparedSamples"]) -> Optional[Tuple[torch.Tensor, ...]]:
        """The prepared samples, made safe to use on this stream, or None when the grid changed since."""
        if prepared is None or prepared.grid_version != self._grid_version:
            return None
        if prepared.stream is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_stream(prepared.stream)
            for t in prepared.samples:
                t.record_stream(cur)  # made on the side stream, used (and freed) on this one
        return prepared.samples

    def render(self, request: RenderRequest) -> Dict[str, torch.Tensor]:
        return self(request.rays_o, request.rays_d, light_positions=request.light_positions,
                    bg_color=request.bg_color, samples=request.samples, normals=request.normals)

    def _density_fn(self) -> Any:
        geometry = self.geometry
        if hasattr(geometry, "forward_density"):
            return geometry.forward_density
        return lambda x: geometry(x)["density"]

    # ------------------------------------------------------------------ rendering
    def forward(self, rays_o: torch.Tensor, rays_d: torch.Tensor, light_positions: Optional[torch.Tensor] = None,
                bg_color: Optional[torch.Tensor] = None, samples: Optional["PreparedSamples"] = None,
                normals: Optional[bool] = None, **kwargs: Any) -> Dict[str, torch.Tensor]:
        """Render rays [..., 3]. Training only: ``samples`` prepared for these rays (:meth:`prepare_samples`),
        ``normals`` False when the step's losses do not read normals (skips ``return_comp_normal``'s normals)."""
        lead = rays_o.shape[:-1]
        o = rays_o.reshape(-1, 3)
        d = rays_d.reshape(-1, 3)
        lp = None
        if light_positions is not None:
            lp = light_positions.reshape(light_positions.shape[0], *([1] * (len(lead) - 1)), 3).expand(*lead, 3)
            lp = lp.reshape(-1, 3)
        bg = None
        if bg_color is not None:
            bg = bg_color.to(o).reshape(-1, 3) if bg_color.numel() > 3 else bg_color.to(o).reshape(1, 3).expand_as(o)
        n = o.shape[0]
        if self.training:
            if self.device.type == "cuda" and self.can_prepare_samples():  # samples prepared now follow this state
                self._params_event = torch.cuda.current_stream(self.device).record_event()
            out = self._render(o, d, lp, bg, samples=self._usable(samples), normals=normals, **kwargs)
        elif n <= self.cfg.eval_chunk_size:
            out = self._render(o, d, lp, bg, **kwargs)
        else:
            parts = []
            for i in range(0, n, self.cfg.eval_chunk_size):
                sl = slice(i, i + self.cfg.eval_chunk_size)
                chunk = self._render(o[sl], d[sl], None if lp is None else lp[sl], None if bg is None else bg[sl],
                                     **kwargs)
                parts.append({k: v for k, v in chunk.items() if k in IMAGE_KEYS})
            out = {k: torch.cat([p[k] for p in parts], 0) for k in parts[0]}
        for k in IMAGE_KEYS:
            if k in out:
                out[k] = out[k].reshape(*lead, -1)
        return out

    def _sample(self, o: torch.Tensor, d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Occupancy-grid marching (and, while training, opacity pruning): ray_indices, t_starts, t_ends."""
        density_fn = self._density_fn()

        def sigma_fn(t_starts: torch.Tensor, t_ends: torch.Tensor, ray_indices: torch.Tensor) -> torch.Tensor:
            pos = o[ray_indices] + d[ray_indices] * (0.5 * (t_starts + t_ends))[:, None]
            return density_fn(pos).reshape(-1)

        prune = self.cfg.grid_prune and self.cfg.prune_alpha_threshold
        ray_indices, t_starts, t_ends = self.estimator.sample(
            o, d, near=self.cfg.near_plane, far=self.cfg.far_plane, render_step_size=self.render_step_size,
            stratified=self.cfg.randomized and self.training,
            alpha_thre=self.cfg.alpha_threshold if prune else 0.0,
            early_stop_eps=self.cfg.early_stop_eps if prune else 0.0,
            sigma_fn=sigma_fn if prune else None,
            max_samples_per_ray=self.cfg.max_samples_per_ray, backend=self.cfg.backend,
        )
        return ray_indices, t_starts, t_ends

    def _render(self, o: torch.Tensor, d: torch.Tensor, lp: Optional[torch.Tensor], bg: Optional[torch.Tensor],
                samples: Optional[Tuple[torch.Tensor, ...]] = None, normals: Optional[bool] = None,
                **kwargs: Any) -> Dict[str, torch.Tensor]:
        n_rays = o.shape[0]
        geometry, material = self.geometry, self.material
        ray_indices, t_starts, t_ends = samples if samples is not None else self._sample(o, d)
        if ray_indices.shape[0] == 0:  # keep a graph: one empty sample on ray 0
            ray_indices = torch.zeros(1, dtype=torch.long, device=o.device)
            t_starts = torch.zeros(1, device=o.device)
            t_ends = torch.zeros(1, device=o.device)
        t_mid = 0.5 * (t_starts + t_ends)
        t_dirs = d[ray_indices]
        positions = o[ray_indices] + t_dirs * t_mid[:, None]
        need_normal = bool(getattr(material, "requires_normal", False)) or (
            self.cfg.return_comp_normal and not (self.training and normals is False))
        geo = geometry(positions, output_normal=need_normal)
        if "density" in geo:
            density = geo["density"]
        elif "sdf" in geo:
            density = laplace_density(geo["sdf"], geometry.beta)
        else:
            raise KeyError(f"{type(geometry).__name__}.forward returned neither 'density' nor 'sdf'")
        light = None if lp is None else lp[ray_indices]
        extra = {k: v for k, v in geo.items() if k not in ("density", "sdf")}
        rgb = material(viewdirs=t_dirs, positions=positions, light_positions=light, **extra, **kwargs)
        comp_bg = bg if bg is not None else self.background(dirs=d)
        res = composite(t_starts, t_ends, density.reshape(-1), ray_indices, n_rays, rgb,
                        normals=geo.get("normal") if need_normal else None, bg_color=comp_bg,
                        backend=self.cfg.backend)
        out: Dict[str, torch.Tensor] = {
            "comp_rgb": res["rgb"],
            "comp_rgb_fg": res["rgb_fg"],
            "comp_rgb_bg": comp_bg.expand(n_rays, -1),
            "opacity": res["opacity"],
            "depth": res["depth"],
            "z_variance": res["z_variance"],
        }
        if need_normal:
            out["comp_normal"] = F.normalize(res["normal"], dim=-1) * (res["opacity"] > 1e-6)
        if self.training:
            out.update({"weights": res["weights"], "t_points": t_mid, "t_intervals": t_ends - t_starts,
                        "ray_indices": ray_indices, "points": positions, "t_dirs": t_dirs})
            if "sdf_grad" in geo:
                out["sdf_grad"] = geo["sdf_grad"]
            if need_normal and "normal" in geo:
                out["normal"] = geo["normal"]  # per sample, for orientation losses
        return out

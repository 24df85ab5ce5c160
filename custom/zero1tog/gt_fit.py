"""Ground-truth splatters: fit one object's splatter image to renders of its mesh by optimisation through our
gaussian rasterizer.

The unknowns are the five attribute images themselves (through ``tanh``, so they stay in (-1, 1)): the fitted
splatter is by construction one that the attribute mapping represents exactly, and it is what the diffusion model
must learn to generate. The splatter is decoded from them with the chosen mapping and rendered with
:func:`splatter.render_splatter`.

**Initialisation** (per pixel of each splatter view, from a render of the mesh at the splatter resolution): a pixel
that sees the object gets a gaussian at the surface point it sees, with the rendered colour, opacity ``init_opacity``,
tangent scales of ``init_scale`` pixel footprints at its depth, and (surfels) its normal along the rotation's third
axis; a background pixel gets an invisible gaussian (opacity ~5e-4, culled by the rasterizer) on its ray at the
object centre's depth.

**Loss** on the supervision views (the splatter views plus ``extra`` random views, at ``render_resolution``): MSE of
the RGB composited on ``background`` plus ``alpha_weight`` x MSE of alpha. Adam, one learning rate per attribute,
decayed exponentially to ``lr_final_ratio`` of it at the last step; ``views_per_step`` random views per step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from .meshes import ObjectMesh, render_mesh
from .splatter import (ATTRIBUTES, attribute_images_to_splatter, get_mapping, render_splatter,
                       rotation_to_normal_quaternion, splatter_to_attribute_images)
from .views import ObjectCameras


@dataclass
class FitConfig:
    resolution: int = 128  # splatter image side (per view)
    render_resolution: Optional[int] = None  # supervision images' side (None: resolution)
    mapping: str = "wonder3d"
    steps: int = 300
    views_per_step: int = 0  # supervision views rendered per step, drawn at random (0: all of them)
    seed: int = 0  # for the choice of views
    # Adam learning rates of the tanh pre-activations, per attribute (pos, opacity, scale, rotation, rgb)
    lr: Tuple[float, float, float, float, float] = (0.01, 0.05, 0.03, 0.03, 0.03)
    lr_final_ratio: float = 0.1  # learning rates decay exponentially to this fraction at the last step
    alpha_weight: float = 1.0
    init_opacity: float = 0.9
    init_scale: float = 0.4  # tangent scale, in pixel footprints at the gaussian's depth
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    supersample: int = 2  # mesh renders of the targets: s x s samples per pixel
    tile_size: int = 16
    backend: str = "auto"


def composite(rgba: torch.Tensor, background: Sequence[float]) -> torch.Tensor:
    """Straight RGBA [..., 4] -> RGB [..., 3] over a constant background."""
    bg = torch.as_tensor(background, dtype=rgba.dtype, device=rgba.device)
    return rgba[..., :3] * rgba[..., 3:] + bg * (1.0 - rgba[..., 3:])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """10 log10(1 / MSE) over all pixels of all views (values in [0, 1])."""
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def initial_splatter(mesh: ObjectMesh, c2w: torch.Tensor, fovy_deg: float, resolution: int,
                     cfg: FitConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """The initial splatter [V, 14, H, W] and the foreground mask [V, H, W] of the splatter views (see above)."""
    H = W = resolution
    dev = c2w.device
    r = render_mesh(mesh, c2w, fovy_deg, H, W, supersample=cfg.supersample, backend="auto")
    mask = r["mask"]
    cam = c2w[:, None, None, :3, 3]
    fwd = -c2w[:, None, None, :3, 2]  # viewing direction
    # rays through the pixel centres (OpenGL camera: y up, -z forward)
    t = math.tan(0.5 * math.radians(fovy_deg))
    ys = (1.0 - 2.0 * (torch.arange(H, device=dev) + 0.5) / H) * t
    xs = (2.0 * (torch.arange(W, device=dev) + 0.5) / W - 1.0) * t
    d_cam = torch.stack([xs[None, :].expand(H, W), ys[:, None].expand(H, W), -torch.ones(H, W, device=dev)], -1)
    d_world = torch.einsum("vij,hwj->vhwi", c2w[:, :3, :3].float(), d_cam)  # unit z-depth rays
    bg_points = cam + d_world * cam.norm(dim=-1, keepdim=True)  # the cameras look at the origin
    points = torch.where(mask[..., None], r["points"], bg_points)
    depth = ((points - cam) * fwd).sum(-1, keepdim=True).clamp_min(1e-3)
    footprint = depth * (2.0 * t / H) * cfg.init_scale
    m = get_mapping(cfg.mapping)
    if m.scale_mode == "surfel":
        normals = torch.where(mask[..., None], r["normals"], -fwd.expand_as(points))
        quats = rotation_to_normal_quaternion(normals)
        scales = torch.cat([footprint, footprint, torch.full_like(footprint, m.surfel_thickness)], -1)
    else:
        quats = torch.zeros(points.shape[:-1] + (4,), device=dev)
        quats[..., 0] = 1.0
        scales = footprint.expand(points.shape[:-1] + (3,))
    lo_op = 1e-3
    # partly covered pixels (silhouettes) start as transparent as their coverage
    cover = r["rgba"][..., 3:]
    opacity = torch.where(mask[..., None], (cfg.init_opacity * cover).clamp_min(lo_op), torch.full_like(depth, lo_op))
    bg = torch.as_tensor(cfg.background, dtype=torch.float32, device=dev)
    rgb = torch.where(mask[..., None], r["rgba"][..., :3], bg.expand_as(points))
    splatter = torch.cat([points, opacity, scales, quats, rgb], -1).permute(0, 3, 1, 2).contiguous()
    return splatter, mask


@dataclass
class FitResult:
    splatter: torch.Tensor  # [V, 14, H, W], activated, exactly representable by the mapping
    stats: Dict[str, float]


def fit_splatter(mesh: ObjectMesh, cams: ObjectCameras, cfg: FitConfig,
                 targets: Optional[Dict[str, torch.Tensor]] = None,
                 progress: Optional[Callable[[int, float], None]] = None) -> FitResult:
    """Fit the splatter of ``mesh`` seen from ``cams`` (object frame). ``targets``: mesh renders (straight RGBA
    [N, h, w, 4]) of the ``splatter`` and ``extra`` cameras at the render resolution, rendered here when None.
    ``progress(step, loss)`` is called after every step. The returned stats hold PSNRs (on ``background``) of the
    supervision views and, when ``cams`` has held-out cameras, of those (``psnr_heldout``) before and after."""
    t0 = time.time()
    res = cfg.resolution
    rres = cfg.render_resolution or res
    fovy = math.radians(cams.fovy_deg)
    sup_c2w = torch.cat([cams.c2w["splatter"], cams.c2w["extra"]], 0)
    if targets is None:
        targets = {k: render_mesh(mesh, cams.c2w[k], cams.fovy_deg, rres, rres, cfg.supersample)["rgba"]
                   for k in ("splatter", "extra", "heldout") if len(cams.c2w[k])}
    sup_rgba = torch.cat([targets["splatter"]] + ([targets["extra"]] if "extra" in targets else []), 0)
    sup_rgb = composite(sup_rgba, cfg.background)
    m = get_mapping(cfg.mapping)

    init, _ = initial_splatter(mesh, cams.c2w["splatter"], cams.fovy_deg, res, cfg)
    images0 = splatter_to_attribute_images(init, m)  # [5, V, 3, H, W]
    u = [torch.atanh(images0[i].clamp(-0.999, 0.999)).requires_grad_(True) for i in range(len(ATTRIBUTES))]
    opt = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(u, cfg.lr)], betas=(0.9, 0.99))
    decay = cfg.lr_final_ratio ** (1.0 / max(cfg.steps - 1, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, decay)

    def decode() -> torch.Tensor:
        return attribute_images_to_splatter(torch.stack([torch.tanh(p) for p in u], 0), m)

    def render(splatter: torch.Tensor, c2w: torch.Tensor) -> Dict[str, torch.Tensor]:
        return render_splatter(splatter, c2w, fovy, rres, rres, cfg.background, backend=cfg.backend,
                               tile_size=cfg.tile_size)

    def heldout_psnr(splatter: torch.Tensor) -> Optional[float]:
        if "heldout" not in targets:
            return None
        with torch.no_grad():
            out = render(splatter, cams.c2w["heldout"])
        return psnr(out["rgb"].clamp(0, 1), composite(targets["heldout"], cfg.background))

    stats: Dict[str, float] = {}
    h0 = heldout_psnr(init)
    if h0 is not None:
        stats["psnr_heldout_init"] = h0
    loss_v = float("nan")
    gen = torch.Generator().manual_seed(int(cfg.seed))
    n_sup = sup_c2w.shape[0]
    k = n_sup if cfg.views_per_step <= 0 else min(cfg.views_per_step, n_sup)
    for step in range(cfg.steps):
        sel = torch.arange(n_sup) if k == n_sup else torch.randperm(n_sup, generator=gen)[:k]
        out = render(decode(), sup_c2w[sel])
        loss = ((out["rgb"] - sup_rgb[sel]) ** 2).mean() \
            + cfg.alpha_weight * ((out["alpha"] - sup_rgba[sel][..., 3:]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_v = float(loss.detach())
        if progress is not None:
            progress(step, loss_v)
    with torch.no_grad():
        splatter = decode()
        out = render(splatter, sup_c2w)
    stats["psnr_supervision"] = psnr(out["rgb"].clamp(0, 1), sup_rgb)
    h1 = heldout_psnr(splatter)
    if h1 is not None:
        stats["psnr_heldout"] = h1
    stats.update(loss=loss_v, steps=float(cfg.steps), seconds=time.time() - t0,
                 opacity_visible=float((splatter[:, 3] >= 1.0 / 255.0).float().mean()))
    return FitResult(splatter.detach(), stats)

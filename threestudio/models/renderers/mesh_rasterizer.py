"""``mesh-rasterizer``: renders the geometry's mesh (``geometry.isosurface()``) with our differentiable rasterizer.

Two ways in:

* **cameras** (``mvp_mtx`` [B, 4, 4], ``height``, ``width``; what ``random-camera`` batches and the evaluation views
  of ``multiview`` hold): rasterize, interpolate positions and normals, query the geometry's features at the covered
  pixels, shade with the material, composite on the background, and antialias colour, normal and opacity. Geometry
  gradients come from the surface positions and, at silhouettes, from :func:`threestudio.ops.rasterize.antialias`.
* **rays** (``rays_o``, ``rays_d`` of any leading shape, e.g. the random pixels of a ``multiview`` training batch):
  nearest ray hits (:mod:`threestudio.ops.rasterize.raycast`); no silhouette gradient, hard opacity.

Image rows: ``mvp_mtx`` follows :mod:`threestudio.ops.cameras` (``flip_y=False``: NDC ``+y`` is the top row). The
rasterizer's row 0 is NDC ``y = -1``, so clip ``y`` is negated before rasterizing and row 0 of every output is the
top of the image, as for the volume renderer.

Outputs ([B, H, W, C], or the rays' leading shape): ``comp_rgb`` (antialiased, on the background), ``comp_rgb_fg``,
``comp_rgb_bg``, ``opacity`` (antialiased coverage), ``comp_normal`` (world-space unit normals times coverage, in
[-1, 1] as the volume renderer's), ``depth`` (distance from the camera along the ray, 0 on the background), and
``mesh`` (the extracted :class:`~threestudio.models.mesh.Mesh`, whose ``extras`` and ``normal_consistency()`` /
``laplacian()`` the system turns into regularisers).

Geometries whose mesh carries a UV texture (``custom-mesh`` with ``texture: mesh``) are shaded from the texture:
their ``uv_features(uv)`` is called with the interpolated UVs instead of ``geometry(positions)``.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

import threestudio
from threestudio.models.mesh import Mesh
from threestudio.models.renderers.base import Rasterizer
from threestudio.models.renderers.schema import MeshRasterizerConfig
from threestudio.ops import rasterize as R
from threestudio.utils.log import warn
from threestudio.utils.misc import constant

SHADING_KWARGS = ("ambient_ratio", "shading")


@threestudio.register("mesh-rasterizer")
class MeshRasterizer(Rasterizer):
    Config = MeshRasterizerConfig

    cfg: Config

    def configure(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
        super().configure(geometry=geometry, material=material, background=background)
        if self.cfg.backend not in R.BACKENDS:
            raise ValueError(f"system.renderer.backend: unknown {self.cfg.backend!r}; choose one of "
                             f"{', '.join(R.BACKENDS)}")
        if self.cfg.normal_type not in ("vertex", "face"):
            raise ValueError(f"system.renderer.normal_type: unknown {self.cfg.normal_type!r} (vertex or face)")

    # ------------------------------------------------------------------ entry
    def forward(self, rays_o: Optional[torch.Tensor] = None, rays_d: Optional[torch.Tensor] = None,
                mvp_mtx: Optional[torch.Tensor] = None, camera_positions: Optional[torch.Tensor] = None,
                light_positions: Optional[torch.Tensor] = None, height: Optional[int] = None,
                width: Optional[int] = None, bg_color: Optional[torch.Tensor] = None, render_rgb: bool = True,
                **kwargs: Any) -> Dict[str, Any]:
        geometry = self.geometry
        if geometry is None or not callable(getattr(geometry, "isosurface", None)):
            raise TypeError(f"mesh-rasterizer needs a geometry with isosurface() (tetrahedra-sdf-grid, custom-mesh, "
                            f"or an implicit geometry); got {type(geometry).__name__}.")
        mesh = geometry.isosurface()
        shading = {k: kwargs[k] for k in SHADING_KWARGS if k in kwargs}
        if mvp_mtx is not None and height is not None and width is not None:
            return self._render_camera(mesh, mvp_mtx, int(height), int(width), camera_positions, light_positions,
                                       bg_color, rays_d, render_rgb, shading)
        if rays_o is not None and rays_d is not None:
            return self._render_rays(mesh, rays_o, rays_d, light_positions, bg_color, render_rgb, shading)
        raise ValueError("mesh-rasterizer needs either mvp_mtx with height and width (a camera batch, e.g. from "
                         "random-camera) or rays_o and rays_d.")

    # ------------------------------------------------------------------ shading of surface points
    def _normals(self, mesh: Mesh) -> torch.Tensor:
        return mesh.v_nrm

    def _shade(self, positions: torch.Tensor, normals: torch.Tensor, viewdirs: torch.Tensor,
               light: Optional[torch.Tensor], uv: Optional[torch.Tensor], shading: Dict[str, Any]) -> torch.Tensor:
        geometry, material = self.geometry, self.material
        if uv is not None:
            geo = geometry.uv_features(uv)
        else:
            geo = geometry(positions, output_normal=False)
        extra = {k: v for k, v in geo.items() if k not in ("normal", "shading_normal")}
        kwargs = dict(viewdirs=viewdirs, positions=positions, light_positions=light, normal=normals,
                      shading_normal=normals, **extra, **shading)
        return _call_accepting(material, kwargs)

    def _uv_source(self, mesh: Mesh) -> bool:
        return (mesh.v_tex is not None and mesh.t_tex_idx is not None
                and callable(getattr(self.geometry, "uv_features", None)))

    def _background(self, dirs: torch.Tensor, bg_color: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        if bg_color is None:
            return self.background(dirs=dirs)
        bg = bg_color.to(like)
        if bg.shape == like.shape:
            return bg
        if bg.dim() == 1:
            return bg.expand_as(like)
        if bg.dim() == 2 and bg.shape[0] == like.shape[0] and like.dim() == 4:  # [B, 3]
            return bg[:, None, None, :].expand_as(like)
        return bg.reshape(like.shape)

    # ------------------------------------------------------------------ camera batches
    def _render_camera(self, mesh: Mesh, mvp: torch.Tensor, H: int, W: int, cam_pos: Optional[torch.Tensor],
                       light_positions: Optional[torch.Tensor], bg_color: Optional[torch.Tensor],
                       rays_d: Optional[torch.Tensor], render_rgb: bool, shading: Dict[str, Any]) -> Dict[str, Any]:
        B = mvp.shape[0]
        dev = mvp.device
        if cam_pos is None:
            cam_pos = camera_centres(mvp)
        dirs = rays_d if (rays_d is not None and rays_d.shape[:3] == (B, H, W)) else pixel_directions(mvp, H, W)
        out: Dict[str, Any] = {"mesh": mesh}
        v_pos = mesh.v_pos
        if mesh.t_pos_idx.shape[0] == 0:
            zeros = torch.zeros(B, H, W, 1, device=dev)
            bg = self._background(dirs, bg_color, torch.zeros(B, H, W, 3, device=dev))
            out.update(comp_rgb=bg, comp_rgb_fg=torch.zeros_like(bg), comp_rgb_bg=bg, opacity=zeros,
                       depth=zeros, comp_normal=torch.zeros(B, H, W, 3, device=dev))
            return out
        be = self.cfg.backend
        tri = mesh.t_pos_idx.to(torch.int32)
        v_clip = torch.matmul(F.pad(v_pos, (0, 1), value=1.0)[None], mvp.transpose(-1, -2))
        v_clip = v_clip * constant([1.0, -1.0, 1.0, 1.0], dev, v_clip.dtype)  # row 0 = top
        rast, _ = R.rasterize(v_clip, tri, (H, W), backend=be)
        topo = R.antialias_construct_topology_hash(tri, backend=be if be != "nvdiffrast" else "auto")
        mask = rast[..., 3:] > 0
        maskf = mask.float()
        out["opacity"] = R.antialias(maskf, rast, v_clip, tri, topo, backend=be)
        if self.cfg.normal_type == "vertex":
            nrm, _ = R.interpolate(self._normals(mesh), rast, tri, backend=be)
        else:
            fn = mesh.face_normals()
            tid = (rast[..., 3].long() - 1).clamp(min=0)
            nrm = fn[tid]
        nrm = F.normalize(nrm, dim=-1) * maskf
        out["comp_normal"] = (R.antialias(nrm, rast, v_clip, tri, topo, backend=be) if self.cfg.antialias_normal
                              else nrm)
        gb_pos, _ = R.interpolate(v_pos, rast, tri, backend=be)
        view = gb_pos - cam_pos.to(gb_pos)[:, None, None, :]
        out["depth"] = view.norm(dim=-1, keepdim=True) * maskf
        sel = mask[..., 0]
        gb_fg = torch.zeros(B, H, W, 3, device=dev, dtype=gb_pos.dtype)
        if render_rgb:
            if bool(sel.any()):
                positions = gb_pos[sel]
                light = None
                if light_positions is not None:
                    light = light_positions.to(gb_pos)[:, None, None, :].expand(B, H, W, 3)[sel]
                uv = None
                if self._uv_source(mesh):
                    uvi, _ = R.interpolate(mesh.v_tex, rast, mesh.t_tex_idx.to(torch.int32), backend=be)
                    uv = uvi[sel]
                rgb = self._shade(positions, nrm[sel], F.normalize(view[sel], dim=-1), light, uv, shading)
                gb_fg = gb_fg.index_put((sel,), rgb[..., :3].to(gb_fg.dtype))
            bg = self._background(dirs, bg_color, gb_fg)
            comp = torch.lerp(bg, gb_fg, maskf)
            out["comp_rgb"] = R.antialias(comp, rast, v_clip, tri, topo, backend=be)
            out["comp_rgb_fg"] = gb_fg
            out["comp_rgb_bg"] = bg
        return out

    # ------------------------------------------------------------------ ray batches
    def _render_rays(self, mesh: Mesh, rays_o: torch.Tensor, rays_d: torch.Tensor,
                     light_positions: Optional[torch.Tensor], bg_color: Optional[torch.Tensor], render_rgb: bool,
                     shading: Dict[str, Any]) -> Dict[str, Any]:
        from threestudio.ops.rasterize.raycast import raycast

        lead = rays_o.shape[:-1]
        o, d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        n = o.shape[0]
        faces = mesh.t_pos_idx
        t, face, bary = raycast(o, d, mesh.v_pos, faces, chunk_pairs=self.cfg.ray_chunk)
        hit = face >= 0
        hitf = hit[:, None].float()
        f = faces[face.clamp(min=0)]
        pos = (bary[..., None] * mesh.v_pos[f]).sum(1)
        if self.cfg.normal_type == "vertex" and faces.shape[0] > 0:
            nrm = F.normalize((bary[..., None] * self._normals(mesh)[f]).sum(1), dim=-1)
        elif faces.shape[0] > 0:
            nrm = mesh.face_normals()[face.clamp(min=0)]
        else:
            nrm = torch.zeros_like(o)
        nrm = nrm * hitf
        out: Dict[str, Any] = {"mesh": mesh, "opacity": hitf, "depth": t[:, None] * hitf, "comp_normal": nrm}
        if render_rgb:
            fg = torch.zeros(n, 3, device=o.device, dtype=o.dtype)
            if bool(hit.any()):
                light = None
                if light_positions is not None:
                    lp = light_positions.to(o)
                    light = (lp.reshape(lp.shape[0], *([1] * (len(lead) - 1)), 3).expand(*lead, 3).reshape(-1, 3)
                             if lp.shape[0] != n else lp)[hit]
                uv = None
                if self._uv_source(mesh):
                    tf = mesh.t_tex_idx[face.clamp(min=0)]
                    uv = (bary[..., None] * mesh.v_tex[tf]).sum(1)[hit]
                rgb = self._shade(pos[hit], nrm[hit], F.normalize(d[hit], dim=-1), light, uv, shading)
                fg = fg.index_put((hit,), rgb[..., :3].to(fg.dtype))
            bg = self._background(d, bg_color, fg)
            out.update(comp_rgb=torch.lerp(bg, fg, hitf), comp_rgb_fg=fg, comp_rgb_bg=bg)
        for k in ("comp_rgb", "comp_rgb_fg", "comp_rgb_bg", "opacity", "depth", "comp_normal"):
            if k in out:
                out[k] = out[k].reshape(*lead, -1)
        return out


def _call_accepting(fn: Any, kwargs: Dict[str, Any]) -> Any:
    """Call ``fn`` with the keyword arguments its signature takes (all of them if it has ``**kwargs``)."""
    try:
        params = inspect.signature(fn.forward if isinstance(fn, torch.nn.Module) else fn).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover
        return fn(**kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return fn(**kwargs)
    names = {p.name for p in params}
    return fn(**{k: v for k, v in kwargs.items() if k in names})


def camera_centres(mvp: torch.Tensor) -> torch.Tensor:
    """World positions [B, 3] of perspective cameras from their mvp matrices (the point that projects to w = 0)."""
    inv = torch.linalg.inv(mvp.double())
    c = inv[:, :, 2]  # inv @ (0, 0, 1, 0)
    w = c[:, 3:4]
    if bool((w.abs() < 1e-12).any()):
        warn("mesh-rasterizer: an orthographic mvp has no camera centre; pass camera_positions for depth and "
             "view directions.")
        w = torch.where(w.abs() < 1e-12, torch.ones_like(w), w)
    return (c[:, :3] / w).to(mvp.dtype)


def pixel_directions(mvp: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Unit world directions [B, H, W, 3] through the pixel centres (row 0 at the top, mvp with flip_y=False)."""
    dev = mvp.device
    x = (2 * torch.arange(W, device=dev, dtype=torch.float64) + 1) / W - 1
    y = 1 - (2 * torch.arange(H, device=dev, dtype=torch.float64) + 1) / H
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    inv = torch.linalg.inv(mvp.double())
    near = torch.stack([xx, yy, -torch.ones_like(xx), torch.ones_like(xx)], -1)
    far = torch.stack([xx, yy, torch.ones_like(xx), torch.ones_like(xx)], -1)
    pn = torch.einsum("bij,hwj->bhwi", inv, near)
    pf = torch.einsum("bij,hwj->bhwi", inv, far)
    d = pf[..., :3] / pf[..., 3:] - pn[..., :3] / pn[..., 3:]
    return F.normalize(d, dim=-1).to(mvp.dtype)

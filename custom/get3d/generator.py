"""``get3d-generator``: GET3D's generator (the default "improved", shared-triplane model) in plain PyTorch.

Pipeline (all batched over samples; no Python loop over the batch):

1. ``map(z_tex, z_geo, psi)`` -> ``ws_tex`` [B, 9, 512], ``ws_geo`` [B, 22, 512] (two mapping networks; truncation
   ``lerp(w_avg, w, psi)`` against each network's tracked ``w_avg``).
2. ``planes(ws_tex, ws_geo)`` -> SDF triplane and texture triplane [B, 96, R, R] (noise mode "const").
3. ``extract_meshes``: SDF and deformation MLPs at every vertex of OUR tet grid (``threestudio.ops.tetrahedra``,
   scaled by ``dmtet_scale``), ``v' = v + tanh(def) / (tet_res * deformation_multiplier)``, then marching tets
   (or FlexiCubes) on all samples at once: the B grids are concatenated into one disjoint grid, so one call
   extracts every mesh, and each vertex / face records its sample. GET3D's sign convention: **sdf > 0 is inside**.
   An all-positive or all-negative sample gets GET3D's template SDF (detached) and an ``sdf_reg_loss``.
4. ``render``: one rasterization of all meshes for all B x V cameras through OUR rasterizer
   (``threestudio.ops.rasterize``). The vertices of the other samples are put behind the camera (clip w = -1),
   so each image shows its own mesh. World positions are interpolated, the texture field is queried at the
   visible pixels only (padded per sample), and ``to_rgb`` (1x1 modulated conv with the last texture w) gives RGB
   (about [-1, 1]; background = to_rgb of a zero feature, as GET3D). The silhouette is antialiased: the only path
   of geometry gradients to the image (and ``normal``, an optional antialiased normal map, a second one).

Cameras follow GET3D (``render.py``): fovy 2 atan(16/35), radius 1.2, y-flipped OpenGL projection.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import threestudio
from threestudio.utils.base import BaseModule

from . import networks as N
from .schema import GET3DGeneratorConfig


class Synthesis(nn.Module):
    """``synthesis``: the triplane generator and the final ``to_rgb``."""

    def __init__(self, generator: N.TriplaneGenerator, to_rgb: N.ToRGB) -> None:
        super().__init__()
        self.generator = generator
        self.to_rgb = to_rgb


@threestudio.register("get3d-generator", family="geometry")
class GET3DGenerator(BaseModule):
    Config = GET3DGeneratorConfig

    cfg: Config

    def configure(self) -> None:
        cfg = self.cfg
        if cfg.iso_surface not in ("dmtet", "flexicubes"):
            raise ValueError(f"get3d-generator.iso_surface: {cfg.iso_surface!r} is not 'dmtet' or 'flexicubes'")
        if cfg.fused_modconv not in ("inference_only", "always", "never"):
            raise ValueError(f"get3d-generator.fused_modconv: {cfg.fused_modconv!r} is not inference_only, always "
                             f"or never")
        gen = N.TriplaneGenerator(cfg.w_dim, cfg.tri_plane_resolution, cfg.feat_channel, cfg.mlp_latent_channel,
                                  cfg.n_implicit_layer, cfg.channel_base, cfg.channel_max,
                                  flexicubes=cfg.iso_surface == "flexicubes")
        self.num_ws_tex, self.num_ws_geo = gen.num_ws_tex, gen.num_ws_geo
        self.mapping = N.MappingNetwork(cfg.z_dim, cfg.w_dim, self.num_ws_tex, cfg.mapping_layers)
        self.mapping_geo = N.MappingNetwork(cfg.z_dim, cfg.w_dim, self.num_ws_geo, cfg.mapping_layers)
        self.synthesis = Synthesis(gen, N.ToRGB(cfg.feat_channel, 3, cfg.w_dim, conv_clamp=256))
        # the grid is not part of the checkpoint (as GET3D): rebuilt from the resolution
        from threestudio.ops.tetrahedra import cube_corners, load_tet_grid

        verts, tets = load_tet_grid(cfg.tet_res)
        verts = verts * cfg.dmtet_scale
        self.register_buffer("grid_verts", verts, persistent=False)
        self.register_buffer("grid_tets", tets, persistent=False)
        if cfg.iso_surface == "flexicubes":
            self.register_buffer("grid_cubes", cube_corners(cfg.tet_res // 2), persistent=False)
        self.shape_min = float(verts.min())
        self.shape_len = float(verts.max()) - self.shape_min
        r = verts.norm(dim=-1)
        self.register_buffer("center_index", r.argmin().reshape(1), persistent=False)
        edge = (verts.abs() >= verts.abs().max() - 1e-6).any(-1)
        self.register_buffer("boundary_mask", edge, persistent=False)

    # ------------------------------------------------------------------------------------------- latents
    @property
    def generator(self) -> N.TriplaneGenerator:
        return self.synthesis.generator

    def _fused(self) -> bool:
        mode = self.cfg.fused_modconv
        return mode == "always" or (mode == "inference_only" and not self.training)

    def map(self, z_tex: torch.Tensor, z_geo: torch.Tensor, truncation_psi: float = 1.0
            ) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.mapping(z_tex, truncation_psi), self.mapping_geo(z_geo, truncation_psi)

    def planes(self, ws_tex: torch.Tensor, ws_geo: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.generator.planes(ws_tex, ws_geo, self._fused())

    # ------------------------------------------------------------------------------------------- fields
    def query_sdf_def(self, sdf_planes: torch.Tensor, ws_geo: torch.Tensor, points: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Raw SDF [B, N, 1] and raw deformation [B, N, 3] (before tanh scaling) at ``points`` [B, N, 3]."""
        f = N.sample_triplane(sdf_planes, points, self.shape_min, self.shape_len)
        w = ws_geo[:, -self.generator.mlp_synthesis_sdf.num_ws:]
        return self.generator.mlp_synthesis_sdf(f, w), self.generator.mlp_synthesis_def(f, w)

    def query_texture(self, tex_planes: torch.Tensor, ws_tex: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Texture features [B, N, feat_channel] at ``points`` [B, N, 3]."""
        f = N.sample_triplane(tex_planes, points, self.shape_min, self.shape_len)
        return self.generator.mlp_synthesis_tex(f, ws_tex[:, -self.generator.mlp_synthesis_tex.num_ws:])

    def to_rgb(self, feat: torch.Tensor, ws_tex: torch.Tensor) -> torch.Tensor:
        """Final 1x1 modulated conv: features [B, N, C] -> RGB [B, N, 3] (about [-1, 1]), with ws_tex[:, -1]."""
        return self.synthesis.to_rgb.forward_points(feat, ws_tex[:, -1])

    def query_rgb(self, tex_planes: torch.Tensor, ws_tex: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.to_rgb(self.query_texture(tex_planes, ws_tex, points), ws_tex)

    # ------------------------------------------------------------------------------------------- meshes
    def grid_sdf(self, sdf_planes: torch.Tensor, ws_geo: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample grid SDF [B, N], deformed grid positions [B, N, 3] and the empty-shape loss [B]."""
        b = sdf_planes.shape[0]
        v = self.grid_verts[None].expand(b, -1, -1)
        sdf, dfm = self.query_sdf_def(sdf_planes, ws_geo, v)
        sdf = sdf[..., 0]
        pos = v + torch.tanh(dfm) / (self.cfg.tet_res * self.cfg.deformation_multiplier)
        # empty-shape guard: a sample without a sign change gets a template (inside at the centre, outside on
        # the boundary), detached, and |sdf| as a loss that pushes it towards a surface
        empty = (sdf > 0).all(1) | (sdf < 0).all(1)
        reg = torch.zeros(b, device=sdf.device, dtype=sdf.dtype)
        if bool(empty.any()):
            reg = torch.where(empty, sdf.abs().mean(1), reg)
            upd = torch.zeros_like(sdf)
            upd[:, self.center_index] = (1.0 - sdf.min(1).values)[:, None]
            upd = torch.where(self.boundary_mask[None], (-1.0 - sdf.max(1, keepdim=True).values), upd)
            fixed = (sdf + upd).detach()
            sdf = torch.where(empty[:, None], fixed, sdf)
            pos = torch.where(empty[:, None, None], pos.detach(), pos)
        return sdf, pos, reg

    def extract_meshes(self, sdf_planes: torch.Tensor, ws_geo: torch.Tensor) -> Dict[str, torch.Tensor]:
        """All samples' meshes as one disjoint mesh: ``verts`` [M, 3], ``faces`` [F, 3], ``vert_sample`` [M],
        ``face_sample`` [F], plus ``sdf_reg_loss`` [B], ``grid_sdf`` [B, N] and the crossing ``edges`` [M, 2]."""
        sdf, pos, reg = self.grid_sdf(sdf_planes, ws_geo)
        b, n = sdf.shape
        if self.cfg.iso_surface == "dmtet":
            from threestudio.ops.marching_tets import marching_tets

            tets = (self.grid_tets[None] + (torch.arange(b, device=sdf.device) * n)[:, None, None]).reshape(-1, 4)
            # our marching tets is negative-inside; GET3D's SDF is positive-inside
            verts, faces, extra = marching_tets(pos.reshape(-1, 3), -sdf.reshape(-1), tets)
            edges = extra["edges"]
            vert_sample = torch.div(edges[:, 0], n, rounding_mode="floor")
        else:
            verts, faces, vert_sample, edges = self._flexicubes(sdf, pos, sdf_planes, ws_geo)
        face_sample = vert_sample[faces[:, 0]] if faces.shape[0] else faces.new_zeros(0)
        return {"verts": verts, "faces": faces, "vert_sample": vert_sample, "face_sample": face_sample,
                "sdf_reg_loss": reg, "grid_sdf": sdf, "edges": edges, "batch": torch.tensor(b)}

    def _flexicubes(self, sdf, pos, sdf_planes, ws_geo):
        """FlexiCubes on our cube lattice with weights from the ``mlp_synthesis_weight`` MLP (the 8 corners'
        triplane features of every cube, concatenated). Runs per sample: FlexiCubes' output is ragged."""
        from threestudio.ops.flexicubes import flexicubes, normalize_weights

        b, n = sdf.shape
        cubes = self.grid_cubes
        res = self.cfg.tet_res // 2
        gen = self.generator
        out_v, out_f, out_s, out_e = [], [], [], []
        offset = 0
        for i in range(b):  # FlexiCubes' per-cube weights are large; keep one sample's at a time
            f = N.sample_triplane(sdf_planes[i:i + 1], self.grid_verts[None], self.shape_min, self.shape_len)
            cf = f[0][cubes].reshape(1, cubes.shape[0], -1)  # [1, C, 8 * 32]
            wts = gen.mlp_synthesis_weight(cf, ws_geo[i:i + 1, -gen.mlp_synthesis_weight.num_ws:])[0]
            beta, alpha, gamma = normalize_weights(wts)
            v, fc, extra = flexicubes(pos[i], -sdf[i], cubes, res, beta=beta, alpha=alpha, gamma=gamma,
                                      training=self.training)
            out_v.append(v)
            out_f.append(fc + offset)
            out_s.append(torch.full((v.shape[0],), i, device=v.device, dtype=torch.long))
            out_e.append(torch.zeros(v.shape[0], 2, device=v.device, dtype=torch.long))
            offset += v.shape[0]
        return torch.cat(out_v), torch.cat(out_f), torch.cat(out_s), torch.cat(out_e)

    # ------------------------------------------------------------------------------------------- rendering
    def render(self, meshes: Dict[str, torch.Tensor], tex_planes: torch.Tensor, ws_tex: torch.Tensor,
               mvp: torch.Tensor, resolution: Optional[int] = None, normals: bool = False
               ) -> Dict[str, torch.Tensor]:
        """Render every sample's mesh under its cameras ``mvp`` [B, V, 4, 4].

        Returns ``rgb`` [B, V, H, W, 3] (about [-1, 1]), ``mask`` (antialiased silhouette, differentiable in the
        vertex positions) and ``mask_hard`` [B, V, H, W, 1], and with ``normals`` an antialiased world-normal map
        ``normal`` [B, V, H, W, 3] in [-1, 1] (background -1... i.e. black after the [0, 1] map).
        """
        from threestudio.ops import rasterize as R

        b, nv = mvp.shape[:2]
        res = int(resolution or self.cfg.img_resolution)
        verts, faces, vs = meshes["verts"], meshes["faces"], meshes["vert_sample"]
        img_sample = torch.arange(b, device=mvp.device).repeat_interleave(nv)  # [B*V]
        homo = torch.cat([verts, torch.ones_like(verts[:, :1])], -1)  # [M, 4]
        m = mvp.reshape(b * nv, 4, 4)
        if faces.shape[0] == 0:
            raise RuntimeError("get3d-generator.render: every sample's mesh is empty (0 faces)")
        clip = torch.einsum("mk,ijk->ijm", homo, m).transpose(1, 2)  # [B*V, M, 4]
        own = (vs[None] == img_sample[:, None])[..., None]  # [B*V, M, 1]
        behind = torch.tensor([0.0, 0.0, 0.0, -1.0], device=clip.device, dtype=clip.dtype)
        clip = torch.where(own, clip, behind)
        faces32 = faces.int()
        rast, _ = R.rasterize(clip, faces32, (res, res), grad_db=False, backend=self.cfg.rasterize_backend)
        hard = (rast[..., 3:] > 0).float()
        topo = R.antialias_construct_topology_hash(faces32, backend=self.cfg.rasterize_backend)
        mask = R.antialias(hard, rast, clip, faces32, topology_hash=topo, backend=self.cfg.rasterize_backend)
        # texture at the visible pixels only, padded per sample
        with torch.no_grad():
            pix = torch.nonzero(rast[..., 3].reshape(-1) > 0, as_tuple=False)[:, 0]
            smp = img_sample[torch.div(pix, res * res, rounding_mode="floor")]
            counts = torch.bincount(smp, minlength=b)
            start = torch.cumsum(counts, 0) - counts
            slot = torch.arange(pix.shape[0], device=pix.device) - start[smp]
            pmax = int(counts.max()) if pix.numel() else 0
        surf, _ = R.interpolate(verts, rast, faces32, backend=self.cfg.rasterize_backend)  # [B*V, H, W, 3]
        pts = surf.reshape(-1, 3)[pix]
        padded = pts.new_zeros(b, max(pmax, 1), 3)
        padded[smp, slot] = pts
        feat = self.query_texture(tex_planes, ws_tex, padded)
        rgb_pts = self.to_rgb(feat, ws_tex)[smp, slot]  # [P, 3]
        bg = self.to_rgb(feat.new_zeros(b, 1, feat.shape[-1]), ws_tex)  # [B, 1, 3]
        rgb = bg[img_sample].reshape(b * nv, 1, 3).expand(-1, res * res, -1).reshape(-1, 3)
        rgb = rgb.index_put((pix,), rgb_pts)
        out = {"rgb": rgb.reshape(b, nv, res, res, 3), "mask": mask.reshape(b, nv, res, res, 1),
               "mask_hard": hard.reshape(b, nv, res, res, 1)}
        if normals:
            from threestudio.models.mesh import vertex_normals

            vn = vertex_normals(verts, faces)
            nimg, _ = R.interpolate(vn, rast, faces32, backend=self.cfg.rasterize_backend)
            nimg = F.normalize(nimg, dim=-1) * hard
            nimg = R.antialias(nimg.contiguous(), rast, clip, faces32, topology_hash=topo,
                               backend=self.cfg.rasterize_backend)
            out["normal"] = nimg.reshape(b, nv, res, res, 3)
        return out

    def forward(self, z_tex: torch.Tensor, z_geo: torch.Tensor, mvp: torch.Tensor, truncation_psi: float = 1.0,
                resolution: Optional[int] = None, normals: bool = False,
                ws: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Dict[str, Any]:
        """z -> ws -> triplanes -> meshes -> renders (``ws`` given: skip the mapping)."""
        ws_tex, ws_geo = ws if ws is not None else self.map(z_tex, z_geo, truncation_psi)
        return self.synthesize(ws_tex, ws_geo, mvp, resolution, normals)

    def synthesize(self, ws_tex: torch.Tensor, ws_geo: torch.Tensor, mvp: torch.Tensor,
                   resolution: Optional[int] = None, normals: bool = False) -> Dict[str, Any]:
        sdf_planes, tex_planes = self.planes(ws_tex, ws_geo)
        meshes = self.extract_meshes(sdf_planes, ws_geo)
        out = self.render(meshes, tex_planes, ws_tex, mvp, resolution, normals)
        out.update(meshes=meshes, tex_planes=tex_planes, sdf_planes=sdf_planes, ws_tex=ws_tex, ws_geo=ws_geo)
        return out

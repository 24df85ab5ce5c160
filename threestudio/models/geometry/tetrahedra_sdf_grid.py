"""``tetrahedra-sdf-grid``: an explicit SDF on a deformable grid, meshed differentiably every step (DMTet), plus a
hash-grid texture field. Magic3D's refinement stage and the geometry of GET3D-style generators.

State: one SDF value (negative inside) and one offset per lattice vertex of a grid of ``isosurface_resolution``
(``R / 2`` cubes per side over ``[-radius, radius]^3``, see :mod:`threestudio.ops.tetrahedra`); with
``isosurface: flexicubes`` also 21 FlexiCubes weights per cube. Vertices move by
``tanh(offset) * deformation_scale * cube edge`` (per axis) when ``isosurface_deformable_grid``.

``isosurface()`` returns the mesh (:class:`threestudio.models.mesh.Mesh`, differentiable in the SDF, the offsets
and the weights) with regularisation terms in ``mesh.extras``: ``sdf_reg`` (GET3D's sign-consistency BCE over
sign-changing edges), and for FlexiCubes ``flexicubes_dev`` (L_dev) and ``flexicubes_weight_reg``. The mesh's own
``normal_consistency()`` and ``laplacian()`` are the smoothness terms.

``create_from(other)`` converts an earlier stage: an implicit density (``implicit-volume``; inside where the density
exceeds its ``isosurface_threshold``, a number or ``auto``), an implicit SDF (``implicit-sdf``) or another grid
(copied with its offsets and weights on the same lattice, else its SDF resampled). The converted SDF is the earlier field minus its threshold, rescaled so
that it changes by about one cube edge per cube edge near the surface (the zero crossings, hence the shape, are
those of the earlier field). With ``copy_net`` (``system.geometry_convert_inherit_texture``) the texture field is
copied too, together with the box it was trained in.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

import threestudio
from threestudio.models.geometry.base import (
    BaseExplicitGeometry,
    BaseGeometry,
    BaseImplicitGeometry,
    contract_to_unisphere,
)
from threestudio.models.geometry.schema import TetrahedraSDFGridConfig
from threestudio.models.mesh import Mesh
from threestudio.models.networks import get_encoding, get_mlp
from threestudio.ops.marching_tets import marching_tets, sdf_sign_consistency_loss
from threestudio.ops.tetrahedra import cube_corners, load_tet_grid
from threestudio.utils.log import info, warn

_KEY = "system.geometry"
ISOSURFACES = ("dmtet", "flexicubes")


@threestudio.register("tetrahedra-sdf-grid")
class TetrahedraSDFGrid(BaseExplicitGeometry):
    Config = TetrahedraSDFGridConfig

    cfg: Config

    def configure(self) -> None:
        super().configure()
        cfg = self.cfg
        if cfg.isosurface not in ISOSURFACES:
            raise ValueError(f"{_KEY}.isosurface: unknown {cfg.isosurface!r}; choose one of {', '.join(ISOSURFACES)}")
        res = cfg.isosurface_resolution
        if res < 4 or res % 2:
            raise ValueError(f"{_KEY}.isosurface_resolution: {res} must be an even number >= 4 (32, 64, 128 are usual)")
        self.n_cells = res // 2
        verts, tets = load_tet_grid(res, cfg.tet_cache_dir)
        self.register_buffer("grid_vertices", verts * (2 * cfg.radius), persistent=False)
        self.register_buffer("tets", tets, persistent=False)
        if cfg.isosurface == "flexicubes":
            self.register_buffer("cubes", cube_corners(self.n_cells), persistent=False)
        self.cell_size = 2 * cfg.radius / self.n_cells
        sdf = self._initial_sdf(self.grid_vertices)
        if cfg.fix_geometry:
            self.register_buffer("sdf", sdf)
            self.register_buffer("deformation", torch.zeros_like(verts))
        else:
            self.sdf = nn.Parameter(sdf)
            self.deformation = (nn.Parameter(torch.zeros_like(verts)) if cfg.isosurface_deformable_grid
                                else None)
        if cfg.isosurface == "flexicubes":
            w = torch.zeros(self.n_cells**3, 21)
            if cfg.fix_geometry:
                self.register_buffer("flexicubes_weights", w)
            else:
                self.flexicubes_weights = nn.Parameter(w)
        # the box (and contraction) the texture field encodes points in: ours, or the earlier stage's when the
        # texture network was inherited from it (create_from with copy_net)
        self.register_buffer("feature_bbox", self.bbox.clone())
        self.register_buffer("feature_unbounded", torch.zeros((), dtype=torch.bool))
        if not cfg.geometry_only:
            self.encoding = get_encoding(cfg.n_input_dims, cfg.pos_encoding_config)
            self.feature_network = get_mlp(self.encoding.n_output_dims, cfg.n_feature_dims, cfg.mlp_network_config)
        self._fixed_mesh: Optional[Mesh] = None

    def _initial_sdf(self, pts: torch.Tensor) -> torch.Tensor:
        kind, params = self.cfg.shape_init, self.cfg.shape_init_params
        if kind in (None, "none", ""):
            return torch.full((pts.shape[0],), 1.0)
        if kind == "sphere":
            return pts.norm(dim=-1) - float(params)
        if kind == "ellipsoid":
            r = torch.as_tensor(list(params), dtype=pts.dtype)
            k0 = (pts / r).norm(dim=-1)
            k1 = (pts / r**2).norm(dim=-1)
            return k0 * (k0 - 1) / k1.clamp_min(1e-12)
        raise ValueError(f"{_KEY}.shape_init: unknown {kind!r}; use sphere, ellipsoid or none (a trained implicit "
                         f"geometry is converted with system.geometry_convert_from; a mesh file is the custom-mesh "
                         f"geometry)")

    # ------------------------------------------------------------------ the mesh
    def deformed_vertices(self) -> torch.Tensor:
        v = self.grid_vertices
        if self.deformation is not None and self.cfg.isosurface_deformable_grid:
            v = v + torch.tanh(self.deformation) * (self.cfg.deformation_scale * self.cell_size)
        return v

    def isosurface(self) -> Mesh:
        if self.cfg.fix_geometry and self._fixed_mesh is not None:
            return self._fixed_mesh
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.fix_geometry):
            mesh = self._extract()
        if self.cfg.fix_geometry:
            self._fixed_mesh = mesh
        return mesh

    def _extract(self) -> Mesh:
        v, sdf = self.deformed_vertices(), self.sdf
        extras: Dict[str, Any] = {}
        if self.cfg.isosurface == "dmtet":
            verts, faces, ex = marching_tets(v, sdf, self.tets)
        else:
            from threestudio.ops.flexicubes import flexicubes, normalize_weights

            beta, alpha, gamma = normalize_weights(self.flexicubes_weights, self.cfg.flexicubes_weight_scale)
            verts, faces, ex = flexicubes(v, sdf, self.cubes, self.n_cells, beta, alpha, gamma,
                                          training=self.training)
            extras["flexicubes_dev"] = ex["l_dev"]
            extras["flexicubes_weight_reg"] = ex["weight_reg"]
        extras["sdf_reg"] = sdf_sign_consistency_loss(sdf, ex["edges"])
        if faces.shape[0] == 0:
            warn(f"{type(self).__name__}: the SDF has no zero crossing inside the grid (empty mesh); check the "
                 f"initial shape ({_KEY}.shape_init) or the converted stage.")
        mesh = Mesh(verts, faces, **extras)
        if self.cfg.isosurface_remove_outliers and faces.shape[0] > 0:
            mesh = mesh.remove_outliers(self.cfg.isosurface_outlier_n_faces_threshold)
        return mesh

    # ------------------------------------------------------------------ texture field
    def _features(self, points: torch.Tensor) -> torch.Tensor:
        x = contract_to_unisphere(points, self.feature_bbox, bool(self.feature_unbounded))
        enc = self.encoding(x.reshape(-1, self.cfg.n_input_dims))
        return self.feature_network(enc).reshape(*points.shape[:-1], -1)

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> Dict[str, torch.Tensor]:
        if self.cfg.geometry_only:
            return {}
        return {"features": self._features(points)}

    def export(self, points: torch.Tensor, **kwargs: Any) -> Dict[str, torch.Tensor]:
        if self.cfg.geometry_only:
            return {}
        return {"features": self._features(points)}

    # ------------------------------------------------------------------ conversion from an earlier stage
    @staticmethod
    @torch.no_grad()
    def create_from(other: BaseGeometry, cfg: Optional[Union[dict, Any]] = None, copy_net: bool = True,
                    **kwargs: Any) -> "TetrahedraSDFGrid":
        instance = TetrahedraSDFGrid(cfg)
        dev = other.bbox.device if hasattr(other, "bbox") else torch.device("cpu")
        pts = instance.grid_vertices.to(dev)
        same_grid = (isinstance(other, TetrahedraSDFGrid) and other.n_cells == instance.n_cells
                     and float(other.cfg.radius) == float(instance.cfg.radius))
        if same_grid:  # the same lattice: copy the state exactly (offsets and FlexiCubes weights too)
            sdf = other.sdf.detach().clone()
            if other.deformation is not None and instance.deformation is not None:
                instance.deformation.data.copy_(other.deformation.detach().to(instance.deformation.device))
            ow, iw = getattr(other, "flexicubes_weights", None), getattr(instance, "flexicubes_weights", None)
            if ow is not None and iw is not None:
                iw.data.copy_(ow.detach().to(iw.device))
        elif isinstance(other, TetrahedraSDFGrid):  # another lattice: resample the SDF (offsets start at zero)
            sdf = _resample(other, pts)
        elif isinstance(other, BaseImplicitGeometry):
            sdf = _sdf_from_implicit(other, pts, instance.cell_size, instance.n_cells)
        else:
            raise TypeError(f"tetrahedra-sdf-grid cannot be created from {type(other).__name__}: it converts "
                            f"implicit-volume, implicit-sdf (any BaseImplicitGeometry) or tetrahedra-sdf-grid.")
        instance.sdf.data.copy_(sdf.to(instance.sdf.device))
        if copy_net:
            instance._inherit_texture(other)
        info(f"tetrahedra-sdf-grid: converted {type(other).__name__} into a {instance.cfg.isosurface} grid of "
             f"resolution {instance.cfg.isosurface_resolution} ({int((sdf < 0).sum())} of {sdf.numel()} vertices "
             f"inside)")
        return instance

    def _inherit_texture(self, other: BaseGeometry) -> None:
        if self.cfg.geometry_only:
            return
        enc, net = getattr(other, "encoding", None), getattr(other, "feature_network", None)
        if enc is None or net is None:
            raise ValueError(f"{_KEY}: geometry_convert_inherit_texture is set but {type(other).__name__} has no "
                             f"texture network (encoding + feature_network) to copy; set "
                             f"system.geometry_convert_inherit_texture=false.")
        try:
            self.encoding.load_state_dict(enc.state_dict())
            self.feature_network.load_state_dict(net.state_dict())
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ValueError(
                f"{_KEY}: cannot inherit the earlier stage's texture network ({first}). Give "
                f"{_KEY}.pos_encoding_config, mlp_network_config and n_feature_dims the earlier stage's values, or "
                f"set system.geometry_convert_inherit_texture=false.") from e
        self.feature_bbox.copy_(other.bbox.to(self.feature_bbox))
        if isinstance(other, TetrahedraSDFGrid):
            self.feature_unbounded.copy_(other.feature_unbounded)
        else:
            self.feature_unbounded.fill_(bool(getattr(other.cfg, "unbounded", False)))


def _resample(other: TetrahedraSDFGrid, pts: torch.Tensor) -> torch.Tensor:
    """The other grid's SDF (trilinear on its lattice) at ``pts``; outside its box: positive."""
    n = other.n_cells
    vol = other.sdf.detach().view(1, 1, n + 1, n + 1, n + 1)  # index (i, j, k) = (x, y, z)
    r = float(other.cfg.radius)
    g = (pts / r).clamp(-1, 1)
    # grid_sample's (x, y, z) index the last, middle, first volume dims: ours are (z, y, x) of the lattice
    s = F.grid_sample(vol, g[:, [2, 1, 0]].view(1, -1, 1, 1, 3), align_corners=True)[0, 0, :, 0, 0]
    outside = (pts.abs() > r).any(-1)
    return torch.where(outside, s.abs().clamp_min(other.cell_size), s)


def _sdf_from_implicit(other: BaseImplicitGeometry, pts: torch.Tensor, cell: float, n: int) -> torch.Tensor:
    vals = []
    for i in range(0, pts.shape[0], 1 << 18):
        vals.append(other.forward_field(pts[i:i + (1 << 18)]).reshape(-1).float())
    field_vals = torch.cat(vals)
    inside_above = getattr(other, "field_inside", "above") == "above"
    thr = other.isosurface_threshold_value(field_vals)
    sdf = (thr - field_vals) if inside_above else (field_vals - thr)
    # outside the earlier stage's box nothing was trained: treat it as empty
    if hasattr(other, "bbox"):
        outside = ((pts < other.bbox[0]) | (pts > other.bbox[1])).any(-1)
        sdf = torch.where(outside, sdf.abs().clamp_min(1e-6), sdf)
    # rescale so that |delta sdf| across sign-changing lattice edges is about one cube edge
    vol = sdf.view(n + 1, n + 1, n + 1)
    diffs = []
    for d in range(3):
        a = vol.narrow(d, 0, n)
        b = vol.narrow(d, 1, n)
        cross = (a < 0) != (b < 0)
        diffs.append((a - b).abs()[cross])
    diffs = torch.cat(diffs)
    if diffs.numel() == 0:
        name = type(other).__name__
        raise ValueError(
            f"{_KEY}: converting {name}: its field never crosses the isosurface threshold ({thr:g}) on this grid, "
            f"so the converted shape would be empty. Set system.geometry_convert_override.isosurface_threshold "
            f"(lower for a density field, or 'auto'), or check that the earlier stage trained.")
    return sdf * (cell / diffs.median().clamp_min(1e-12))

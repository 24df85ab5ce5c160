"""``gaussian-splatting``: an explicit set of 3D gaussians (3DGS), and its standard PLY file.

Parameters (``self.params``, an ``nn.ParameterDict``; the gaussians along dim 0, the names gsplat's strategies use):
``means`` [N, 3], ``scales`` [N, 3] (log), ``quats`` [N, 4] (w, x, y, z; normalised when used), ``opacities`` [N]
(logit), and the colour: ``sh0`` [N, 1, 3] + ``shN`` [N, (d+1)^2 - 1, 3] spherical-harmonics coefficients
(``color_mode: sh``, degree ``d = sh_degree``; colour = max(SH + 0.5, 0)) or ``colors`` [N, 3] (logit of RGB,
``color_mode: rgb``). The number of gaussians changes with densification; loading a state dict (checkpoint,
``weights``) resizes the parameters to the saved ones.

Initialisation (``init_type``): ``random`` (uniform in a ball of ``init_radius``), ``points`` (a PLY point cloud at
``init_path`` with optional ``red green blue``), ``mesh`` (``init_num_points`` samples on the surface of an OBJ/GLB/PLY
mesh at ``init_path``, e.g. an earlier stage's export, with the colours of its texture or vertex colours), ``ply`` (a
3DGS PLY: the scene is restored as saved), ``scene`` (from the training data, when the system passes it with
:meth:`GaussianSplatting.set_scene`: the capture's sparse SfM points when its transforms name a ``ply_file_path``,
else ``init_num_points`` random points in a cube of half side ``init_extent`` times the camera layout's extent that
the training cameras see). Scales start at the mean distance to the 3 nearest neighbours (or
``init_scale``), opacities at ``init_opacity``, rotations at identity.

PLY (:func:`write_gaussian_ply` / :func:`read_gaussian_ply`): binary little-endian float32 vertex properties
``x y z nx ny nz f_dc_0..2 f_rest_0..44 opacity scale_0..2 rot_0..3`` (the layout of the original 3DGS code,
which common splat viewers read): ``f_dc`` is the SH DC term, ``f_rest`` the
higher bands channel-major (all of R, then G, then B) padded with zeros to degree 3, opacity a logit, scales logs,
``rot`` the quaternion (w, x, y, z).
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

import threestudio
from threestudio.models.geometry.base import BaseGeometry
from threestudio.models.geometry.schema import GaussianSplattingConfig
from threestudio.ops.splatting import rgb_to_sh0, sh0_to_rgb
from threestudio.ops.splatting.init import knn_mean_distance, sample_ball, sample_mesh_surface
from threestudio.utils.log import info, warn
from threestudio.utils.saving import atomic_write_bytes

INIT_TYPES = ("random", "points", "mesh", "ply", "scene")
COLOR_MODES = ("sh", "rgb")
PLY_SH_DEGREE = 3  # f_rest_0..44


class GaussianInitError(ValueError):
    """A bad initialisation source; the message names the config key and the file."""


# ------------------------------------------------------------------------------------------------------- PLY
def ply_property_names(n_rest: int = 3 * ((PLY_SH_DEGREE + 1) ** 2 - 1)) -> list:
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_gaussian_ply(path: str, means: torch.Tensor, scales_log: torch.Tensor, quats: torch.Tensor,
                       opacities_logit: torch.Tensor, sh: torch.Tensor) -> str:
    """Write the standard 3DGS PLY atomically. ``sh`` [N, K, 3] (K <= 16; padded to 16 with zeros)."""
    n, k = sh.shape[0], sh.shape[1]
    kmax = (PLY_SH_DEGREE + 1) ** 2
    if k > kmax:
        raise ValueError(f"write_gaussian_ply: at most {kmax} SH coefficients per channel, got {k}")
    sh = torch.cat([sh, sh.new_zeros(n, kmax - k, 3)], dim=1).detach().float().cpu()
    f_dc = sh[:, 0, :]  # [N, 3]
    f_rest = sh[:, 1:, :].transpose(1, 2).reshape(n, -1)  # channel-major: [N, 3 * 15]
    cols = [means.detach().float().cpu(), torch.zeros(n, 3), f_dc, f_rest,
            opacities_logit.detach().float().cpu().reshape(n, 1), scales_log.detach().float().cpu(),
            quats.detach().float().cpu()]
    data = torch.cat(cols, dim=1).numpy().astype("<f4")
    names = ply_property_names()
    assert data.shape[1] == len(names)
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {n}",
                        *[f"property float {p}" for p in names], "end_header"]) + "\n"
    atomic_write_bytes(path, header.encode("ascii") + np.ascontiguousarray(data).tobytes())
    return path


def read_gaussian_ply(path: str) -> Dict[str, torch.Tensor]:
    """Read a 3DGS PLY: ``means`` [N, 3], ``scales`` (log) [N, 3], ``quats`` [N, 4], ``opacities`` (logit) [N],
    ``sh`` [N, K, 3] (K from the number of ``f_rest_*`` fields). Any property order; float or double."""
    with open(path, "rb") as f:
        data = f.read()
    marker = b"end_header\n"
    if not data.startswith(b"ply") or marker not in data:
        raise GaussianInitError(f"{path}: not a PLY file (no 'ply' magic or no end_header).")
    end = data.index(marker) + len(marker)
    header = data[:end].decode("ascii", errors="replace").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise GaussianInitError(f"{path}: only binary little-endian PLY is supported (found: "
                                f"{next((h for h in header if h.startswith('format')), 'no format line')}).")
    types = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "uint8": "u1",
             "int": "<i4", "int32": "<i4", "uint": "<u4", "short": "<i2", "ushort": "<u2"}
    n, fields, in_vertex = 0, [], False
    for line in header:
        parts = line.split()
        if parts[:1] == ["element"]:
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                n = int(parts[2])
        elif parts[:1] == ["property"] and in_vertex:
            if parts[1] == "list":
                raise GaussianInitError(f"{path}: list properties in the vertex element are not supported.")
            fields.append((parts[2], types[parts[1]]))
    rec = np.frombuffer(data[end:], dtype=np.dtype(fields), count=n)
    names = {f for f, _ in fields}
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [k for k in need if k not in names]
    if missing:
        raise GaussianInitError(f"{path}: not a 3DGS PLY, missing vertex properties {', '.join(missing)} "
                                f"(has: {', '.join(sorted(names))[:200]}).")

    def col(*keys: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(rec[k], dtype=np.float32) for k in keys], axis=-1))

    n_rest = len([k for k in names if k.startswith("f_rest_")])
    if n_rest % 3:
        raise GaussianInitError(f"{path}: {n_rest} f_rest_* properties is not a multiple of 3.")
    k = 1 + n_rest // 3
    rest = col(*[f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k - 1).transpose(1, 2) if n_rest else \
        torch.zeros(n, 0, 3)
    sh = torch.cat([col("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :], rest], dim=1)
    return {"means": col("x", "y", "z"), "scales": col("scale_0", "scale_1", "scale_2"),
            "quats": col("rot_0", "rot_1", "rot_2", "rot_3"), "opacities": col("opacity")[:, 0], "sh": sh}


def _resolve(path: Optional[str], key: str) -> str:
    from threestudio.utils.extensions import REPO_ROOT

    if not path:
        raise GaussianInitError(f"{key} is not set: give the file to initialise the gaussians from.")
    tried = [path] if os.path.isabs(path) else [os.path.abspath(path), os.path.join(REPO_ROOT, path)]
    for p in tried:
        if os.path.isfile(p):
            return p
    raise GaussianInitError(f"{key}='{path}' not found (looked in: {', '.join(tried)}).")


def load_mesh_for_sampling(path: str) -> Dict[str, Optional[torch.Tensor]]:
    """v_pos, faces and colour sources (texture + UVs, or vertex colours) of an OBJ/GLB/PLY mesh, via trimesh."""
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # trimesh raises many types
        raise GaussianInitError(f"cannot read mesh {path}: {e}") from e
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise GaussianInitError(f"{path} holds no triangles (init_type: mesh needs a surface mesh).")
    out: Dict[str, Optional[torch.Tensor]] = {
        "v_pos": torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32),
        "faces": torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long),
        "v_rgb": None, "v_tex": None, "texture": None,
    }
    visual = mesh.visual
    if getattr(visual, "kind", None) == "texture" and getattr(visual, "uv", None) is not None:
        mat = visual.material
        img = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        if img is not None:
            tex = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
            out["texture"] = torch.from_numpy(tex)
            out["v_tex"] = torch.as_tensor(np.asarray(visual.uv), dtype=torch.float32)
        else:
            factor = getattr(mat, "baseColorFactor", None)
            if factor is not None:
                c = torch.as_tensor(np.asarray(factor[:3], dtype=np.float32) / (255.0 if max(factor[:3]) > 1 else 1))
                out["v_rgb"] = c.expand(out["v_pos"].shape[0], 3).clone()
    elif getattr(visual, "kind", None) == "vertex":
        out["v_rgb"] = torch.as_tensor(np.asarray(visual.vertex_colors)[:, :3], dtype=torch.float32) / 255.0
    return out


# ------------------------------------------------------------------------------------------------------- module
@threestudio.register("gaussian-splatting")
class GaussianSplatting(BaseGeometry):
    Config = GaussianSplattingConfig

    cfg: Config

    def configure(self) -> None:
        super().configure()
        c = self.cfg
        if c.color_mode not in COLOR_MODES:
            raise ValueError(f"system.geometry.color_mode={c.color_mode!r}: use one of {', '.join(COLOR_MODES)}.")
        if not 0 <= c.sh_degree <= 3:
            raise ValueError(f"system.geometry.sh_degree={c.sh_degree}: use 0, 1, 2 or 3.")
        if c.init_type not in INIT_TYPES:
            raise ValueError(f"system.geometry.init_type={c.init_type!r}: use one of {', '.join(INIT_TYPES)}.")
        if not 0.0 < c.init_opacity < 1.0:
            raise ValueError(f"system.geometry.init_opacity={c.init_opacity}: must be in (0, 1).")
        self.register_bbox(c.radius)
        self.active_sh_degree = c.sh_degree if c.sh_degree_interval <= 0 else 0
        self.params = nn.ParameterDict()
        if c.init_type == "ply":
            self.load_ply(_resolve(c.init_path, "system.geometry.init_path"))
            return
        points, colors = self._init_points()
        self.init_from_points(points, colors)

    # ---- initialisation
    def _init_points(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        c = self.cfg
        g = torch.Generator().manual_seed(int(c.init_seed))
        if c.init_type in ("random", "scene"):  # scene: a placeholder until set_scene
            return sample_ball(c.init_num_points, c.init_radius, g), None
        path = _resolve(c.init_path, "system.geometry.init_path")
        if c.init_type == "points":
            from threestudio.utils.saving import read_ply_points

            try:
                d = read_ply_points(path)
            except Exception as e:
                raise GaussianInitError(f"system.geometry.init_path: cannot read point cloud {path}: {e}") from e
            if not all(k in d for k in ("x", "y", "z")):
                raise GaussianInitError(f"system.geometry.init_path: {path} has no x/y/z vertex properties.")
            pts = torch.from_numpy(np.stack([d["x"], d["y"], d["z"]], -1).astype(np.float32))
            rgb = None
            if all(k in d for k in ("red", "green", "blue")):
                rgb = torch.from_numpy(np.stack([d["red"], d["green"], d["blue"]], -1).astype(np.float32))
                rgb = rgb / 255.0 if d["red"].dtype == np.uint8 else rgb
            return pts, rgb
        m = load_mesh_for_sampling(path)
        pts, rgb, _ = sample_mesh_surface(m["v_pos"], m["faces"], c.init_num_points, g, v_rgb=m["v_rgb"],
                                          v_tex=m["v_tex"], texture=m["texture"])
        info(f"gaussian-splatting: {c.init_num_points} gaussians sampled on {path}"
             f"{' with colours' if rgb is not None else ''}")
        return pts, rgb

    @torch.no_grad()
    def set_scene(self, scene: Dict[str, Any]) -> None:
        """``init_type: scene``: (re)initialise from the data module in ``scene["datamodule"]`` (its sparse points,
        else random points that its training cameras see). Called before a checkpoint loads, which then resizes."""
        c = self.cfg
        dm = scene.get("datamodule")
        if c.init_type != "scene" or dm is None:
            return
        points = dm.scene_points if hasattr(dm, "scene_points") else None
        if points is not None:
            pts, rgb = points
            info(f"gaussian-splatting: {pts.shape[0]} gaussians from the capture's sparse points "
                 f"({scene.get('points_path')})")
            self.init_from_points(pts, rgb)
            return
        if not hasattr(dm, "train_cameras"):
            raise GaussianInitError(f"system.geometry.init_type=scene: the data module {type(dm).__name__} gives no "
                                    f"cameras or points to initialise from; use init_type random, points or mesh.")
        from threestudio.ops.splatting.init import sample_in_frusta

        cams = dm.train_cameras()
        c2w = torch.stack([k["c2w"] for k in cams]).float()
        intr = torch.tensor([[k["fx"], k["fy"], k["cx"], k["cy"]] for k in cams], dtype=torch.float32)
        sizes = torch.tensor([[k["width"], k["height"]] for k in cams], dtype=torch.float32)
        centers = c2w[:, :3, 3]
        mid = centers.mean(0)
        extent = float((centers - mid).norm(dim=-1).max().clamp_min(1e-6))
        g = torch.Generator().manual_seed(int(c.init_seed))
        pts = sample_in_frusta(c2w, intr, sizes, c.init_num_points, c.init_extent * extent, mid, 0.0, g)
        info(f"gaussian-splatting: {pts.shape[0]} random gaussians in the training cameras' view (no sparse points "
             f"in the capture)")
        self.init_from_points(pts, None)

    @torch.no_grad()
    def init_from_points(self, points: torch.Tensor, colors: Optional[torch.Tensor] = None) -> None:
        """(Re)create the gaussians at ``points`` [N, 3] with ``colors`` [N, 3] in [0, 1] (None: ``init_color`` or
        random), isotropic scales from the nearest neighbours, identity rotations."""
        c = self.cfg
        n = points.shape[0]
        if n == 0:
            raise GaussianInitError("gaussian-splatting: no points to initialise from.")
        g = torch.Generator().manual_seed(int(c.init_seed) + 1)
        if colors is None:
            colors = (torch.tensor(c.init_color, dtype=torch.float32).expand(n, 3) if c.init_color is not None
                      else torch.rand(n, 3, generator=g))
        colors = colors.float().clamp(0.0, 1.0)
        scale = (torch.full((n,), float(c.init_scale)) if c.init_scale is not None
                 else knn_mean_distance(points.float()).clamp_min(1e-7)) * c.init_scale_multiplier
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        self._set(points.float(), torch.log(scale)[:, None].repeat(1, 3), quats,
                  torch.full((n,), math.log(c.init_opacity / (1 - c.init_opacity))), colors)

    def _set(self, means: torch.Tensor, scales: torch.Tensor, quats: torch.Tensor, opacities: torch.Tensor,
             rgb: Optional[torch.Tensor] = None, sh: Optional[torch.Tensor] = None) -> None:
        dev = self.bbox.device
        p: Dict[str, torch.Tensor] = {"means": means, "scales": scales, "quats": quats, "opacities": opacities}
        k = (self.cfg.sh_degree + 1) ** 2
        n = means.shape[0]
        if self.cfg.color_mode == "sh":
            if sh is None:
                sh = torch.cat([rgb_to_sh0(rgb)[:, None, :], torch.zeros(n, k - 1, 3)], dim=1)
            elif sh.shape[1] < k:
                sh = torch.cat([sh, sh.new_zeros(n, k - sh.shape[1], 3)], dim=1)
            elif sh.shape[1] > k:
                if sh[:, k:].abs().max() > 0:
                    warn(f"gaussian-splatting: dropping SH bands above degree {self.cfg.sh_degree} (sh_degree).")
                sh = sh[:, :k]
            p["sh0"] = sh[:, :1].contiguous()
            if k > 1:
                p["shN"] = sh[:, 1:].contiguous()
        else:
            if rgb is None:
                if sh.shape[1] > 1 and sh[:, 1:].abs().max() > 0:
                    warn("gaussian-splatting: color_mode rgb keeps only the SH DC term (view dependence dropped).")
                rgb = sh0_to_rgb(sh[:, 0])
            p["colors"] = torch.logit(rgb.clamp(1e-6, 1 - 1e-6))
        for name in list(self.params.keys()):
            del self.params[name]
        for name, v in p.items():
            self.params[name] = nn.Parameter(v.float().contiguous().to(dev))

    # ---- state
    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        c = self.cfg
        if c.sh_degree_interval <= 0 or c.init_type == "ply":
            self.active_sh_degree = c.sh_degree
        else:
            self.active_sh_degree = min(c.sh_degree, global_step // c.sh_degree_interval)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # densification changes N: take the saved sizes before the values are copied in
        for name in list(self.params.keys()):
            key = f"{prefix}params.{name}"
            if key in state_dict and state_dict[key].shape != self.params[name].shape:
                self.params[name] = nn.Parameter(torch.empty(state_dict[key].shape, device=self.bbox.device,
                                                             dtype=self.params[name].dtype))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- activated values, as the rasterizer takes them
    def splat_args(self) -> Dict[str, Any]:
        """means, quats, scales, opacities, colors and sh_degree for :func:`rasterize_gaussians`."""
        p = self.params
        if self.cfg.color_mode == "sh":
            d = self.active_sh_degree
            colors = p["sh0"] if "shN" not in p else torch.cat([p["sh0"], p["shN"]], dim=1)
            colors = colors[:, : (d + 1) ** 2]
            sh_degree: Optional[int] = d
        else:
            colors, sh_degree = torch.sigmoid(p["colors"]), None
        return {"means": p["means"], "quats": p["quats"], "scales": torch.exp(p["scales"]),
                "opacities": torch.sigmoid(p["opacities"]), "colors": colors, "sh_degree": sh_degree}

    def sh_coefficients(self) -> torch.Tensor:
        """[N, K, 3] SH coefficients (rgb mode: the DC term of the colour)."""
        p = self.params
        if self.cfg.color_mode == "sh":
            return p["sh0"] if "shN" not in p else torch.cat([p["sh0"], p["shN"]], dim=1)
        return rgb_to_sh0(torch.sigmoid(p["colors"]))[:, None, :]

    # ---- PLY
    def save_ply(self, path: str) -> str:
        p = self.params
        return write_gaussian_ply(path, p["means"], p["scales"], p["quats"], p["opacities"], self.sh_coefficients())

    @torch.no_grad()
    def load_ply(self, path: str) -> None:
        d = read_gaussian_ply(path)
        self._set(d["means"], d["scales"], d["quats"], d["opacities"], sh=d["sh"])
        self.active_sh_degree = self.cfg.sh_degree
        info(f"gaussian-splatting: {d['means'].shape[0]} gaussians loaded from {path}")

    # ---- conversion from an earlier stage
    @staticmethod
    def create_from(other: BaseGeometry, cfg: Optional[Any] = None, **kwargs: Any) -> "GaussianSplatting":
        """From another gaussian geometry (copied), or from an implicit one: gaussians on its isosurface."""
        geo = GaussianSplatting(cfg)
        if isinstance(other, GaussianSplatting):
            geo._set(other.params["means"].data, other.params["scales"].data, other.params["quats"].data,
                     other.params["opacities"].data, sh=other.sh_coefficients().data)
            return geo
        if not hasattr(other, "isosurface"):
            raise TypeError(f"Cannot create gaussians from {type(other).__name__}: it has no isosurface().")
        mesh = other.isosurface()
        g = torch.Generator().manual_seed(int(geo.cfg.init_seed))
        pts, rgb, _ = sample_mesh_surface(mesh.v_pos.detach().cpu().float(), mesh.t_pos_idx.cpu(),
                                        geo.cfg.init_num_points, g, v_rgb=None if mesh.v_rgb is None
                                        else mesh.v_rgb.detach().cpu().float())
        geo.init_from_points(pts, rgb)
        return geo

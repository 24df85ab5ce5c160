"""A procedural, textured test scene rendered by our own sphere tracer (vectorised torch, CPU is fine).

:func:`make_scene` writes a Blender/nerfstudio-style multi-view dataset that the ``multiview`` data module reads:

    out_dir/
      transforms_train.json   Blender keys (camera_angle_x, frames[{file_path, transform_matrix}]) plus the
      transforms_test.json    nerfstudio intrinsics (fl_x, fl_y, cx, cy, w, h) and "scene_radius", "scene_center"
      images/train_000.png    RGBA, 8 bit, straight (not premultiplied) colour; alpha 1 on the object, 0 outside,
      images/test_000.png     fractional on silhouette edges (ss x ss supersampling)
      scene.json              the primitives, light, camera rig and parameters (to rebuild the scene)
      complete.json           written last: the parameters; a re-run with the same parameters skips all work

The scene. World space is threestudio's (right-handed, z up); poses use the OpenGL camera convention of
:mod:`threestudio.ops.cameras` (x right, y up, looking along -z). The object is a union of analytic SDF primitives
(a rounded box "table", a sphere, an upright torus, a cylinder with a small sphere on top) that fits in
[-0.6, 0.6] x [-0.6, 0.6] x [-0.4, 0.4]; its bounding radius (``scene_radius``, about 0.72) is written to the JSON
files. Each primitive has a procedural texture (stripes, checker, gradient or solid; smooth, so that 2x2
supersampling anti-aliases it and PSNR is meaningful). Shading is Lambertian with one fixed directional light plus
ambient, baked into the colour: ``albedo * (ambient + (1 - ambient) * max(0, n . l))``, so the images are
view-consistent and a NeRF with view-independent colour can fit them exactly.

Cameras: every camera looks at the origin from distance ``distance`` (default 2.0) with a horizontal field of view of
``fov_x_deg`` (default 45 deg), which frames the object's bounding sphere with a margin. Training views lie on a
Fibonacci spiral over elevations [-30, 80] deg (about a quarter of them below the horizon), with a seeded azimuth
offset and seeded jitter; test views are a turntable at elevation 20 deg, held out from training.

Deterministic for a seed: the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from threestudio.ops.cameras import c2w_from_spherical, get_ray_directions, get_rays
from threestudio.utils.saving import atomic_write_bytes, encode_png

SCENE_VERSION = 1
KINDS = ("sphere", "rounded_box", "torus", "cylinder")
TEXTURES = ("solid", "stripes", "checker", "gradient")
COMPLETE_MARKER = "complete.json"
OWNER_MARKER = ".threestudio-synthetic-scene"  # written first: the folder is ours, also while half rendered


# ------------------------------------------------------------------------------------------------------ the scene
@dataclass
class Primitive:
    """One analytic SDF primitive in its local frame, placed by ``center`` and ``rotation_deg``.

    kind / params (local frame):
      sphere:      radius
      rounded_box: half_size [3] (outer extents), rounding
      torus:       major, minor (ring in the local xy plane, axis local z)
      cylinder:    radius, half_height (axis local z, flat caps)
    texture (of local coordinates q of the surface point; w in [0, 1] mixes color_a -> color_b):
      solid:    w = 0
      stripes:  w = 0.5 + 0.5 sin(2 pi frequency q[axis])
      checker:  w = 0.5 + 0.5 clamp(4 sin(2 pi f q.x) sin(2 pi f q.y) sin(2 pi f q.z), -1, 1)
      gradient: w = clamp(0.5 + q[axis] / (2 extent), 0, 1), extent = the primitive's bounding radius
    """

    kind: str
    center: Tuple[float, float, float]
    params: Dict[str, Any]
    texture: str = "solid"
    color_a: Tuple[float, float, float] = (0.8, 0.8, 0.8)
    color_b: Tuple[float, float, float] = (0.2, 0.2, 0.2)
    frequency: float = 4.0
    axis: int = 2
    rotation_deg: Tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Unknown primitive kind '{self.kind}'; use one of {', '.join(KINDS)}.")
        if self.texture not in TEXTURES:
            raise ValueError(f"Unknown texture '{self.texture}' for a {self.kind}; use one of {', '.join(TEXTURES)}.")
        if self.axis not in (0, 1, 2):
            raise ValueError(f"Texture axis must be 0, 1 or 2 (x, y, z), got {self.axis}.")
        needed = {"sphere": ("radius",), "rounded_box": ("half_size", "rounding"), "torus": ("major", "minor"),
                  "cylinder": ("radius", "half_height")}[self.kind]
        missing = [k for k in needed if k not in self.params]
        if missing:
            raise ValueError(f"A {self.kind} needs params {', '.join(needed)}; missing: {', '.join(missing)}.")

    @property
    def rotation(self) -> torch.Tensor:
        """Local-to-world rotation [3, 3] (columns: local axes in world), R = Rz @ Ry @ Rx of ``rotation_deg``."""
        return rotation_matrix(self.rotation_deg)

    def bounding_radius(self) -> float:
        """Radius of a sphere around ``center`` that contains the primitive."""
        p = self.params
        if self.kind == "sphere":
            return float(p["radius"])
        if self.kind == "rounded_box":
            return float(np.linalg.norm(np.asarray(p["half_size"], dtype=np.float64)))
        if self.kind == "torus":
            return float(p["major"]) + float(p["minor"])
        return float(math.hypot(float(p["radius"]), float(p["half_height"])))

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        for k in ("center", "color_a", "color_b", "rotation_deg"):
            d[k] = [float(v) for v in d[k]]
        return d

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "Primitive":
        return Primitive(**{**d, "center": tuple(d["center"]), "color_a": tuple(d["color_a"]),
                            "color_b": tuple(d["color_b"]), "rotation_deg": tuple(d["rotation_deg"])})


def rotation_matrix(rotation_deg: Sequence[float]) -> torch.Tensor:
    """R = Rz(c) @ Ry(b) @ Rx(a) for ``rotation_deg`` = (a, b, c) in degrees (float32 [3, 3])."""
    a, b, c = (math.radians(float(v)) for v in rotation_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return torch.from_numpy(rz @ ry @ rx).float()


def default_primitives(seed: int = 0) -> List[Primitive]:
    """The quick-start object: a rounded-box table with a striped sphere, an upright gradient torus and a striped
    cylinder with a small checkered ball on top. ``seed`` jitters positions (by up to 0.02) and colours slightly."""
    rng = np.random.default_rng(int(seed) + 1000)

    def jit(v: Sequence[float], s: float = 0.02) -> Tuple[float, float, float]:
        return tuple(float(x) for x in np.round(np.asarray(v) + rng.uniform(-s, s, 3) * np.array([1, 1, 0]), 6))

    def col(v: Sequence[float]) -> Tuple[float, float, float]:
        return tuple(float(x) for x in np.round(np.clip(np.asarray(v) + rng.uniform(-0.05, 0.05, 3), 0, 1), 6))

    return [
        Primitive("rounded_box", (0.0, 0.0, -0.25), {"half_size": [0.5, 0.38, 0.1], "rounding": 0.04},
                  texture="checker", color_a=col((0.88, 0.86, 0.80)), color_b=col((0.22, 0.32, 0.55)),
                  frequency=1.6, rotation_deg=(0.0, 0.0, 10.0)),
        Primitive("sphere", jit((-0.18, -0.04, 0.09)), {"radius": 0.25}, texture="stripes",
                  color_a=col((0.88, 0.20, 0.15)), color_b=col((0.95, 0.82, 0.25)), frequency=3.5, axis=2,
                  rotation_deg=(20.0, 0.0, 0.0)),
        Primitive("torus", jit((0.28, 0.16, 0.07)), {"major": 0.16, "minor": 0.06}, texture="gradient",
                  color_a=col((0.12, 0.55, 0.25)), color_b=col((0.25, 0.75, 0.95)), axis=0,
                  rotation_deg=(90.0, 0.0, 30.0)),
        Primitive("cylinder", jit((0.24, -0.24, 0.0)), {"radius": 0.09, "half_height": 0.15}, texture="stripes",
                  color_a=col((0.50, 0.28, 0.70)), color_b=col((0.92, 0.92, 0.92)), frequency=5.0, axis=2),
        Primitive("sphere", jit((0.24, -0.24, 0.22), 0.0), {"radius": 0.08}, texture="checker",
                  color_a=col((0.95, 0.55, 0.10)), color_b=col((0.15, 0.15, 0.15)), frequency=6.0),
    ]


@dataclass
class Light:
    """A fixed directional light (``direction`` points from the surface towards the light) plus ambient."""

    direction: Tuple[float, float, float] = (0.45, -0.35, 0.82)
    ambient: float = 0.35

    def unit(self) -> torch.Tensor:
        return F.normalize(torch.tensor(self.direction, dtype=torch.float32), dim=0)


def _extent_from_origin(prim: Primitive) -> float:
    """Largest distance from the world origin to a point of ``prim``: |center| + bounding radius, tightened by the
    corners of the primitive's local bounding box where it has one."""
    c = np.asarray(prim.center, dtype=np.float64)
    loose = float(np.linalg.norm(c)) + prim.bounding_radius()
    p = prim.params
    if prim.kind == "rounded_box":
        half = np.asarray(p["half_size"], dtype=np.float64)
    elif prim.kind == "cylinder":
        half = np.array([p["radius"], p["radius"], p["half_height"]], dtype=np.float64)
    elif prim.kind == "torus":
        half = np.array([p["major"] + p["minor"]] * 2 + [p["minor"]], dtype=np.float64)
    else:
        return loose
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    corners = c + (signs * half) @ prim.rotation.double().numpy().T
    return min(loose, float(np.linalg.norm(corners, axis=-1).max()))


def scene_radius(prims: Sequence[Primitive]) -> float:
    """A bounding radius of the union around the origin (every surface point is at most this far from it)."""
    return max(_extent_from_origin(p) for p in prims)


# ------------------------------------------------------------------------------------------------------ SDFs
def _to_local(prim: Primitive, p: torch.Tensor) -> torch.Tensor:
    """World points [N, 3] -> local points (R^T (p - c)), i.e. (p - c) @ R."""
    c = torch.tensor(prim.center, dtype=p.dtype, device=p.device)
    return (p - c) @ prim.rotation.to(p)


def sdf_local(prim: Primitive, q: torch.Tensor) -> torch.Tensor:
    """Signed distance [N] of local points q [N, 3] to ``prim`` (negative inside; exact for all four kinds)."""
    p = prim.params
    if prim.kind == "sphere":
        return q.norm(dim=-1) - float(p["radius"])
    if prim.kind == "rounded_box":
        r = float(p["rounding"])
        b = torch.tensor(p["half_size"], dtype=q.dtype, device=q.device) - r
        d = q.abs() - b
        outside = d.clamp_min(0.0).norm(dim=-1)
        inside = d.max(dim=-1).values.clamp_max(0.0)
        return outside + inside - r
    if prim.kind == "torus":
        ring = torch.stack([q[:, :2].norm(dim=-1) - float(p["major"]), q[:, 2]], dim=-1)
        return ring.norm(dim=-1) - float(p["minor"])
    # cylinder
    d = torch.stack([q[:, :2].norm(dim=-1) - float(p["radius"]), q[:, 2].abs() - float(p["half_height"])], dim=-1)
    return d.max(dim=-1).values.clamp_max(0.0) + d.clamp_min(0.0).norm(dim=-1)


def primitive_sdf(prim: Primitive, points: torch.Tensor) -> torch.Tensor:
    """Signed distance [N] of world points [N, 3] to one primitive."""
    return sdf_local(prim, _to_local(prim, points))


def scene_sdf(prims: Sequence[Primitive], points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The union's SDF [N] (min over primitives) and the index [N] of the nearest primitive."""
    d = torch.stack([primitive_sdf(pr, points) for pr in prims], dim=-1)
    dist, idx = d.min(dim=-1)
    return dist, idx


def primitive_normal(prim: Primitive, points: torch.Tensor) -> torch.Tensor:
    """Unit outward normals [N, 3]: the SDF's gradient (autograd) at world points on the surface."""
    with torch.enable_grad():
        x = points.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(primitive_sdf(prim, x).sum(), x)
    return F.normalize(g, dim=-1)


def albedo(prim: Primitive, points: torch.Tensor) -> torch.Tensor:
    """Texture colour [N, 3] at world points (see :class:`Primitive` for the formulas)."""
    q = _to_local(prim, points)
    a = torch.tensor(prim.color_a, dtype=q.dtype, device=q.device)
    b = torch.tensor(prim.color_b, dtype=q.dtype, device=q.device)
    f = 2.0 * math.pi * float(prim.frequency)
    if prim.texture == "solid":
        w = torch.zeros_like(q[:, 0])
    elif prim.texture == "stripes":
        w = 0.5 + 0.5 * torch.sin(f * q[:, prim.axis])
    elif prim.texture == "checker":
        s = torch.sin(f * q[:, 0]) * torch.sin(f * q[:, 1]) * torch.sin(f * q[:, 2])
        w = 0.5 + 0.5 * (4.0 * s).clamp(-1.0, 1.0)
    else:  # gradient
        w = (0.5 + q[:, prim.axis] / (2.0 * prim.bounding_radius())).clamp(0.0, 1.0)
    return a * (1.0 - w[:, None]) + b * w[:, None]


def shade(albedo_rgb: torch.Tensor, normals: torch.Tensor, light: Light) -> torch.Tensor:
    """Lambert + ambient: albedo * (ambient + (1 - ambient) * max(0, n . l)), clamped to [0, 1]."""
    l_dir = light.unit().to(normals)
    lam = (normals * l_dir).sum(-1, keepdim=True).clamp_min(0.0)
    return (albedo_rgb * (light.ambient + (1.0 - light.ambient) * lam)).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------------------ tracing
def sphere_trace(prims: Sequence[Primitive], rays_o: torch.Tensor, rays_d: torch.Tensor, bound_radius: float,
                 max_steps: int = 160, eps: float = 1e-4) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """March unit rays [N, 3] through the union's SDF, inside the sphere of ``bound_radius`` around the origin.

    Returns (t [N], hit [N] bool, prim_index [N] long; -1 where there is no hit). Only rays still marching are
    evaluated at each step.
    """
    n = rays_o.shape[0]
    # the bounding sphere: |o + t d|^2 = R^2
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - bound_radius**2
    disc = b * b - c
    enters = disc > 0
    sq = disc.clamp_min(0).sqrt()
    t_near = (-b - sq).clamp_min(0.0)
    t_far = -b + sq
    t = t_near.clone()
    hit = torch.zeros(n, dtype=torch.bool, device=rays_o.device)
    idx = torch.full((n,), -1, dtype=torch.long, device=rays_o.device)
    active = torch.nonzero(enters & (t_far > 0), as_tuple=False)[:, 0]
    last_d = torch.full((n,), float("inf"), device=rays_o.device)
    for _ in range(max_steps):
        if active.numel() == 0:
            break
        p = rays_o[active] + t[active, None] * rays_d[active]
        d, _ = scene_sdf(prims, p)
        last_d[active] = d
        done_hit = d < eps
        hit[active[done_hit]] = True
        t[active] = t[active] + torch.where(done_hit, torch.zeros_like(d), d)
        keep = (~done_hit) & (t[active] < t_far[active])
        active = active[keep]
    # rays that ran out of steps while grazing a surface count as hits
    if active.numel():
        graze = last_d[active] < 1e-3
        hit[active[graze]] = True
    if hit.any():
        hi = torch.nonzero(hit, as_tuple=False)[:, 0]
        _, pid = scene_sdf(prims, rays_o[hi] + t[hi, None] * rays_d[hi])
        idx[hi] = pid
    return t, hit, idx


def render_rays(prims: Sequence[Primitive], rays_o: torch.Tensor, rays_d: torch.Tensor, light: Light,
                bound_radius: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Shaded colour [N, 3] (0 where nothing is hit) and hit [N] for unit rays."""
    R = scene_radius(prims) + 1e-3 if bound_radius is None else bound_radius
    t, hit, pid = sphere_trace(prims, rays_o, rays_d, R)
    rgb = torch.zeros_like(rays_o)
    for k, prim in enumerate(prims):
        sel = torch.nonzero(pid == k, as_tuple=False)[:, 0]
        if sel.numel() == 0:
            continue
        pts = rays_o[sel] + t[sel, None] * rays_d[sel]
        rgb[sel] = shade(albedo(prim, pts), primitive_normal(prim, pts), light)
    return rgb, hit


def render_views(prims: Sequence[Primitive], c2w: torch.Tensor, height: int, width: int, focal: float,
                 light: Light, supersample: int = 2) -> torch.Tensor:
    """RGBA images [B, H, W, 4] (straight colour) of cameras c2w [B, 4, 4] with focal length ``focal`` (pixels) and
    the principal point at the image centre. Each pixel averages ``supersample`` x ``supersample`` sub-pixel rays:
    alpha = fraction of sub-rays that hit, colour = mean colour of the sub-rays that hit."""
    s = int(supersample)
    dirs = get_ray_directions(height * s, width * s, float(focal) * s)
    rays_o, rays_d = get_rays(dirs, c2w)  # [B, Hs, Ws, 3]
    rgb, hit = render_rays(prims, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), light)
    B = c2w.shape[0]
    rgb = rgb.view(B, height, s, width, s, 3)
    hit_f = hit.float().view(B, height, s, width, s, 1)
    alpha = hit_f.mean(dim=(2, 4))
    color_sum = (rgb * hit_f).sum(dim=(2, 4))
    color = color_sum / (alpha * s * s).clamp_min(1e-8)
    return torch.cat([color, alpha], dim=-1)


# ------------------------------------------------------------------------------------------------------ cameras
def spiral_cameras(n: int, seed: int, distance: float, elevation_range: Tuple[float, float] = (-30.0, 80.0)
                  ) -> Tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """c2w [n, 4, 4], elevations and azimuths (deg) of a seeded Fibonacci spiral, uniform in sin(elevation)."""
    rng = np.random.default_rng(int(seed))
    lo, hi = (math.sin(math.radians(e)) for e in elevation_range)
    u = (np.arange(n) + rng.uniform(0.2, 0.8, n)) / max(n, 1)
    elev = np.degrees(np.arcsin(lo + (hi - lo) * u))
    golden = 180.0 * (3.0 - math.sqrt(5.0))
    azim = np.mod(rng.uniform(0.0, 360.0) + golden * np.arange(n), 360.0)
    elev, azim = np.round(elev, 6), np.round(azim, 6)
    c2w = c2w_from_spherical(torch.tensor(elev, dtype=torch.float32), torch.tensor(azim, dtype=torch.float32),
                             torch.full((n,), float(distance)))
    return c2w, elev, azim


def turntable_cameras(n: int, distance: float, elevation_deg: float = 20.0
                 ) -> Tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """A turntable of ``n`` views at ``elevation_deg``, starting half a step off azimuth 0."""
    azim = np.round(np.mod(180.0 / max(n, 1) + np.arange(n) * 360.0 / max(n, 1), 360.0), 6)
    elev = np.full(n, float(elevation_deg))
    c2w = c2w_from_spherical(torch.tensor(elev, dtype=torch.float32), torch.tensor(azim, dtype=torch.float32),
                             torch.full((n,), float(distance)))
    return c2w, elev, azim


# ------------------------------------------------------------------------------------------------------ writing
@dataclass
class SceneResult:
    out_dir: str
    skipped: bool
    params: Dict[str, Any]
    files: List[str] = field(default_factory=list)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _to_u8(rgba: torch.Tensor) -> np.ndarray:
    return (rgba.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def is_synthetic_scene(root: str) -> bool:
    """True when ``root`` holds a scene written (or being written) by :func:`make_scene`."""
    if os.path.isfile(os.path.join(root, OWNER_MARKER)):
        return True
    scene_json = os.path.join(root, "scene.json")  # a complete scene without the owner marker
    if not (os.path.isfile(os.path.join(root, COMPLETE_MARKER)) and os.path.isfile(scene_json)):
        return False
    try:
        with open(scene_json, "r", encoding="utf-8") as f:
            return "procedural SDF scene" in str(json.load(f).get("description", ""))
    except (OSError, ValueError):
        return False


def is_complete(out_dir: str, params: Dict[str, Any]) -> bool:
    """True when ``out_dir`` holds a finished dataset made with exactly ``params`` (all its files present)."""
    marker = os.path.join(out_dir, COMPLETE_MARKER)
    if not os.path.isfile(marker):
        return False
    try:
        with open(marker, "r", encoding="utf-8") as f:
            done = json.load(f)
    except (OSError, ValueError):
        return False
    if done.get("params") != json.loads(_json_bytes(params)):
        return False
    return all(os.path.isfile(os.path.join(out_dir, p)) for p in done.get("files", []))


def _render_chunks(chunks: Any, splits: Dict[str, Any], prims: Sequence[Primitive], H: int, W: int, focal: float,
                   light: Light, supersample: int, out_dir: str, written: List[str], iterator: Any) -> None:
    with torch.no_grad():
        for chunk in iterator:
            c2w = torch.stack([splits[s][0][i] for s, i in chunk])
            imgs = render_views(prims, c2w, H, W, focal, light, supersample)
            for (split, i), img in zip(chunk, imgs):
                rel = f"images/{split}_{i:03d}.png"
                atomic_write_bytes(os.path.join(out_dir, rel), encode_png(_to_u8(img)))
                written.append(rel)


def make_scene(out_dir: str, n_train: int = 100, n_test: int = 20, resolution: int = 128, seed: int = 0,
               supersample: int = 2, distance: float = 2.0, fov_x_deg: float = 45.0,
               test_elevation_deg: float = 20.0, primitives: Optional[Sequence[Primitive]] = None,
               light: Optional[Light] = None, views_per_chunk: int = 4, progress: bool = True,
               force: bool = False) -> SceneResult:
    """Render the procedural scene into ``out_dir`` (see the module docstring for the layout).

    ``primitives`` / ``light`` replace the default object and light (``default_primitives(seed)``). The run is
    skipped when ``out_dir`` already holds a complete dataset made with the same parameters (unless ``force``).
    Returns a :class:`SceneResult` (``skipped`` says whether anything was rendered).
    """
    if n_train < 1 or n_test < 0 or resolution < 4 or supersample < 1:
        raise ValueError(f"make_scene: need n_train >= 1, n_test >= 0, resolution >= 4, supersample >= 1; got "
                         f"n_train={n_train}, n_test={n_test}, resolution={resolution}, supersample={supersample}.")
    if not 1.0 < fov_x_deg < 170.0:
        raise ValueError(f"make_scene: fov_x_deg must be in (1, 170) degrees, got {fov_x_deg}.")
    prims = list(primitives) if primitives is not None else default_primitives(seed)
    light = light or Light()
    radius = scene_radius(prims)
    if distance <= radius:
        raise ValueError(f"make_scene: camera distance {distance} must exceed the scene radius {radius:.3f}.")
    H = W = int(resolution)
    focal = 0.5 * W / math.tan(0.5 * math.radians(fov_x_deg))
    params: Dict[str, Any] = {
        "version": SCENE_VERSION, "n_train": int(n_train), "n_test": int(n_test), "resolution": H, "seed": int(seed),
        "supersample": int(supersample), "distance": float(distance), "fov_x_deg": float(fov_x_deg),
        "test_elevation_deg": float(test_elevation_deg), "primitives": [p.to_json() for p in prims],
        "light": {"direction": [float(v) for v in light.direction], "ambient": float(light.ambient)},
    }
    out_dir = os.fspath(out_dir)
    if not force and is_complete(out_dir, params):
        return SceneResult(out_dir, True, params)

    if os.path.isdir(out_dir) and os.listdir(out_dir) and not is_synthetic_scene(out_dir):
        raise ValueError(f"make_scene: {out_dir} is not empty and holds no synthetic scene of ours; it may be your "
                         f"data, so nothing is written there. Choose a new or empty folder.")
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    atomic_write_bytes(os.path.join(out_dir, OWNER_MARKER), b"written by threestudio.data.synthetic_scene.make_scene\n")
    marker = os.path.join(out_dir, COMPLETE_MARKER)
    if os.path.exists(marker):
        os.remove(marker)  # the folder is being rewritten: it is not complete until the end

    splits = {"train": spiral_cameras(n_train, seed, distance),
              "test": turntable_cameras(n_test, distance, test_elevation_deg)}
    jobs = [(split, i) for split in ("train", "test") for i in range(len(splits[split][1]))]
    chunks = [jobs[i:i + views_per_chunk] for i in range(0, len(jobs), views_per_chunk)]
    written: List[str] = []
    iterator: Any = chunks
    if progress:
        from rich.progress import track

        iterator = track(chunks, description=f"Rendering {len(jobs)} views", total=len(chunks))
    threads = torch.get_num_threads()
    # one thread: these small element-wise ops gain little from two, and lose a lot when another process is busy
    torch.set_num_threads(1)
    try:
        _render_chunks(chunks, splits, prims, H, W, focal, light, supersample, out_dir, written, iterator)
    finally:
        torch.set_num_threads(threads)

    common = {
        "camera_angle_x": math.radians(fov_x_deg), "camera_angle_y": 2.0 * math.atan(0.5 * H / focal),
        "fl_x": focal, "fl_y": focal, "cx": 0.5 * W, "cy": 0.5 * H, "w": W, "h": H,
        "scene_radius": radius, "scene_center": [0.0, 0.0, 0.0],
        "camera_convention": "OpenGL (x right, y up, looking along -z); world z up",
    }
    for split, (c2w, elev, azim) in splits.items():
        frames = [{"file_path": f"images/{split}_{i:03d}.png",
                   "transform_matrix": [[round(float(v), 8) for v in row] for row in c2w[i].tolist()],
                   "elevation_deg": float(elev[i]), "azimuth_deg": float(azim[i])}
                  for i in range(len(elev))]
        rel = f"transforms_{split}.json"
        atomic_write_bytes(os.path.join(out_dir, rel), _json_bytes({**common, "frames": frames}))
        written.append(rel)
    scene = {"description": "procedural SDF scene, see threestudio/data/synthetic_scene.py", "params": params,
             "scene_radius": radius, "focal": focal}
    atomic_write_bytes(os.path.join(out_dir, "scene.json"), _json_bytes(scene))
    written.append("scene.json")
    atomic_write_bytes(marker, _json_bytes({"params": params, "files": sorted(written)}))
    return SceneResult(out_dir, False, params, sorted(written))

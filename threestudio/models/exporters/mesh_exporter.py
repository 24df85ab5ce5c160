"""``mesh-exporter``: the geometry's isosurface as a textured mesh (OBJ + MTL + PNG and/or GLB).

Steps: ``geometry.isosurface()`` -> decimate to ``max_faces`` -> xatlas UV unwrap (vertices split along seams, so
every vertex has one UV, as GLB needs) -> rasterize the UV layout at ``texture_size`` -> 3D surface point of every
covered texel -> ``geometry.export(points)`` -> ``material.export(...)["albedo"]`` -> texture image (row 0 = v = 1)
-> dilate colours ``texture_padding`` texels around the charts.

Contract with the modules:

* geometry: ``isosurface() -> Mesh`` (world coordinates) and ``export(points [N, 3]) -> {"features": [N, C], ...}``.
* material: ``export(points=..., features=..., <other geometry outputs>) -> {"albedo": [N, 3] in [0, 1], ...}``.
  Only the keyword arguments its signature accepts are passed. A material whose export gives no ``albedo`` is an
  error (implement ``export``, or set ``save_texture: false``).

Without UVs (``save_uv: false``) the colours are baked per vertex instead (``vertex_colors_when_no_uv``).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

import threestudio
from threestudio.models.exporters.base import Exporter, ExporterOutput
from threestudio.models.exporters.schema import MeshExporterConfig
from threestudio.models.mesh import Mesh, vertex_normals
from threestudio.ops.decimate import METHODS as DECIMATE_METHODS
from threestudio.ops.decimate import decimate
from threestudio.ops.uv_bake import dilate_texture, interpolate_texels, rasterize_uv
from threestudio.utils.log import get_rank, info, warn

FORMATS = ("obj", "glb")
# threestudio's `fmt` values -> (formats, save_uv)
_FMT_ALIASES: Dict[str, Tuple[List[str], Optional[bool]]] = {
    "obj-mtl": (["obj"], True),
    "obj": (["obj"], False),
    "glb": (["glb"], None),
}
_KEY = "system.exporter"

# Runs xatlas in a child process: a crash inside xatlas (it segfaults on some meshes) becomes an error message
# instead of killing the run. argv: input .npz, output .npz, options JSON.
_XATLAS_WORKER = r"""
import json, sys
import numpy as np
import xatlas
data = np.load(sys.argv[1])
opts = json.loads(sys.argv[3])
atlas = xatlas.Atlas()
atlas.add_mesh(data["v"], data["f"])
chart, pack = xatlas.ChartOptions(), xatlas.PackOptions()
for k, v in opts["chart"].items():
    setattr(chart, k, v)
for k, v in opts["pack"].items():
    setattr(pack, k, v)
atlas.generate(chart_options=chart, pack_options=pack)
vmapping, indices, uvs = atlas[0]
np.savez(sys.argv[2], vmapping=vmapping, indices=indices, uvs=uvs,
         info=np.array([atlas.atlas_count, atlas.chart_count, atlas.width, atlas.height], dtype=np.int64),
         utilization=np.array(atlas.utilization, dtype=np.float64).reshape(-1))
"""


@threestudio.register("mesh-exporter")
class MeshExporter(Exporter):
    Config = MeshExporterConfig

    cfg: Config

    def configure(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
        super().configure(geometry=geometry, material=material, background=background)
        cfg = self.cfg
        self.formats: List[str] = [str(f).lower() for f in cfg.formats]
        self.save_uv: bool = cfg.save_uv
        if cfg.fmt is not None:
            if cfg.fmt not in _FMT_ALIASES:
                raise ValueError(f"{_KEY}.fmt: unknown value {cfg.fmt!r}; use one of "
                                 f"{', '.join(repr(k) for k in _FMT_ALIASES)} (or leave it unset and list "
                                 f"{_KEY}.formats, e.g. [obj, glb]).")
            self.formats, save_uv = list(_FMT_ALIASES[cfg.fmt][0]), _FMT_ALIASES[cfg.fmt][1]
            if save_uv is not None:
                self.save_uv = save_uv
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"{_KEY}.formats: {list(cfg.formats)!r} is not a non-empty list of "
                             f"{' / '.join(FORMATS)}; e.g. {_KEY}.formats=[obj,glb].")
        if not 16 <= cfg.texture_size <= 16384:
            raise ValueError(f"{_KEY}.texture_size: {cfg.texture_size} is outside [16, 16384]; 1024 or 2048 are usual.")
        if cfg.texture_padding < -1:
            raise ValueError(f"{_KEY}.texture_padding: {cfg.texture_padding} must be >= 0 texels "
                             f"(or -1 to fill every empty texel).")
        if cfg.texture_format.lower() not in ("png", "jpg", "jpeg"):
            raise ValueError(f"{_KEY}.texture_format: {cfg.texture_format!r} is not supported; textures are "
                             f"written as 'png'.")
        if cfg.texture_format.lower() != "png":
            warn(f"{_KEY}.texture_format={cfg.texture_format!r}: textures are written as PNG (lossless).")
        if cfg.max_faces < 0:
            raise ValueError(f"{_KEY}.max_faces: {cfg.max_faces} must be >= 0 (0 = never decimate).")
        if cfg.decimate_method not in DECIMATE_METHODS:
            raise ValueError(f"{_KEY}.decimate_method: {cfg.decimate_method!r} is not one of "
                             f"{', '.join(DECIMATE_METHODS)}.")
        if cfg.query_chunk <= 0:
            raise ValueError(f"{_KEY}.query_chunk: {cfg.query_chunk} must be a positive number of points.")
        if self.save_uv:
            self._chart_options = _xatlas_options("ChartOptions", cfg.xatlas_chart_options, "xatlas_chart_options")
            pack = {"resolution": cfg.texture_size, "padding": max(cfg.texture_padding, 1)}
            pack.update(cfg.xatlas_pack_options)
            self._pack_options = _xatlas_options("PackOptions", pack, "xatlas_pack_options")

    # ---------------------------------------------------------------------------------------------- the export
    def __call__(self) -> List[ExporterOutput]:
        cfg = self.cfg
        mesh = self._isosurface()
        v_pos = mesh.v_pos.detach().float().cpu()
        t_pos_idx = mesh.t_pos_idx.detach().long().cpu()
        if cfg.max_faces > 0 and t_pos_idx.shape[0] > cfg.max_faces:
            v_pos, t_pos_idx = decimate(v_pos, t_pos_idx, cfg.max_faces, method=cfg.decimate_method,
                                        progress=_show_progress())
        params: Dict[str, Any] = {"formats": list(self.formats)}
        v_nrm = vertex_normals(v_pos, t_pos_idx) if cfg.save_normal else None

        if self.save_uv:
            vmapping, faces, uvs = self.unwrap(v_pos, t_pos_idx)
            v_pos, t_pos_idx = v_pos[vmapping], faces
            v_nrm = None if v_nrm is None else v_nrm[vmapping]
            params.update(v_tex=uvs, t_tex_idx=faces)
            if cfg.save_texture:
                params["texture"] = self.bake_texture(v_pos, t_pos_idx, uvs)
        elif cfg.save_texture and cfg.vertex_colors_when_no_uv:
            params["v_rgb"] = self.query_albedo(v_pos, what="vertex colours")
        params.update(v_pos=v_pos, t_pos_idx=t_pos_idx, v_nrm=v_nrm)
        return [ExporterOutput(save_name=cfg.save_name, save_type="mesh", params=params)]

    def _isosurface(self) -> Mesh:
        geometry = self.geometry
        if geometry is None or not callable(getattr(geometry, "isosurface", None)):
            name = type(geometry).__name__ if geometry is not None else "None"
            raise TypeError(f"mesh-exporter needs a geometry with an isosurface() method returning a Mesh; "
                            f"got {name}. Use a geometry that can be meshed, or set system.exporter_type to "
                            f"another exporter.")
        mesh = geometry.isosurface()
        n_faces = 0 if mesh is None else int(mesh.t_pos_idx.shape[0])
        if n_faces == 0:
            thr = getattr(getattr(geometry, "cfg", None), "isosurface_threshold", None)
            thr_txt = f" (now {thr!r})" if thr is not None else ""
            raise ValueError(
                f"mesh-exporter: the isosurface of {type(geometry).__name__} is empty (0 faces), so there is "
                f"nothing to export. The field never crosses system.geometry.isosurface_threshold{thr_txt} inside "
                f"the bounding box: for a density field lower the threshold (or use 'auto'), for an SDF check its "
                f"sign; also check that the checkpoint loaded and training converged."
            )
        info(f"Isosurface: {mesh.v_pos.shape[0]} vertices, {n_faces} faces")
        return mesh

    def unwrap(self, v_pos: torch.Tensor, t_pos_idx: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xatlas UV unwrap. Returns (vmapping [V'] into the input vertices, faces [F, 3] over the split vertices,
        uvs [V', 2] in [0, 1])."""
        from rich.console import Console

        n_faces = t_pos_idx.shape[0]
        v = np.ascontiguousarray(v_pos.numpy(), dtype=np.float32)
        f = np.ascontiguousarray(t_pos_idx.numpy(), dtype=np.uint32)
        t0 = time.perf_counter()
        console = Console(stderr=True, quiet=not _show_progress())
        with console.status(f"Unwrapping {n_faces} faces with xatlas (single atlas, can take minutes for "
                            f"100k+ faces)"):
            if self.cfg.xatlas_subprocess:
                out = _xatlas_in_subprocess(v, f, self._chart_options, self._pack_options)
            else:
                out = _xatlas_in_process(v, f, self._chart_options, self._pack_options)
        atlas_count, chart_count, width, height = (int(x) for x in out["info"])
        if atlas_count != 1:
            raise RuntimeError(
                f"xatlas packed the charts into {atlas_count} atlases, but the exporter writes one texture. "
                f"Remove texels_per_unit from {_KEY}.xatlas_pack_options (it is then chosen to fit one "
                f"atlas), or lower it."
            )
        info(f"UV unwrap: {n_faces} faces -> {chart_count} charts, atlas {width}x{height} "
             f"(utilization {float(out['utilization'][0]) * 100:.0f}%) in {time.perf_counter() - t0:.1f} s")
        return (torch.as_tensor(out["vmapping"].astype(np.int64)),
                torch.as_tensor(out["indices"].astype(np.int64)),
                torch.as_tensor(out["uvs"].astype(np.float32)))

    def bake_texture(self, v_pos: torch.Tensor, t_pos_idx: torch.Tensor, uvs: torch.Tensor) -> torch.Tensor:
        """Albedo texture [H, W, 3] (float in [0, 1], row 0 = v = 1) of the mesh with per-vertex ``uvs``."""
        size = self.cfg.texture_size
        device = _device_of(self.geometry)
        t0 = time.perf_counter()
        face_id, bary = rasterize_uv(uvs.to(device), t_pos_idx.to(device), size, size, progress=_show_progress())
        points, flat = interpolate_texels(v_pos.to(device), t_pos_idx.to(device), face_id, bary)
        colors = self.query_albedo(points, what=f"a {size}x{size} texture")
        texture = torch.zeros((size * size, 3), dtype=torch.float32, device=colors.device)
        texture[flat.to(colors.device)] = colors
        texture = texture.view(size, size, 3).cpu()
        mask = (face_id >= 0).cpu()
        texture = dilate_texture(texture, mask, self.cfg.texture_padding)
        info(f"Baked a {size}x{size} texture ({int(mask.sum())} texels covered, "
             f"{100.0 * float(mask.float().mean()):.0f}%) in {time.perf_counter() - t0:.1f} s")
        return texture

    @torch.no_grad()
    def query_albedo(self, points: torch.Tensor, what: str = "colours") -> torch.Tensor:
        """geometry.export -> material.export albedo at ``points`` [N, 3], in chunks; returns [N, 3] on the CPU."""
        geometry, material = self.geometry, self.material
        if material is None or not callable(getattr(material, "export", None)):
            raise TypeError(f"mesh-exporter needs a material with an export() method to bake {what}; got "
                            f"{type(material).__name__}. Set {_KEY}.save_texture=false to export the bare mesh.")
        device = _device_of(geometry)
        chunk = self.cfg.query_chunk
        n = points.shape[0]
        out = torch.zeros((n, 3), dtype=torch.float32)
        starts = range(0, n, chunk)
        if _show_progress() and n > chunk:
            from rich.progress import track

            starts = track(starts, description=f"Baking {what}", total=len(starts), transient=True)
        for s in starts:
            p = points[s:s + chunk].to(device=device, dtype=torch.float32)
            geo_out = geometry.export(p)
            if not isinstance(geo_out, dict) or "features" not in geo_out:
                keys = sorted(geo_out) if isinstance(geo_out, dict) else type(geo_out).__name__
                raise ValueError(f"{type(geometry).__name__}.export(points) must return a dict with 'features' "
                                 f"[N, C]; it returned {keys}.")
            mat_out = _call_with_accepted(material.export, dict(geo_out, points=p))
            albedo = mat_out.get("albedo") if isinstance(mat_out, dict) else None
            if albedo is None:
                keys = sorted(mat_out) if isinstance(mat_out, dict) else type(mat_out).__name__
                raise ValueError(
                    f"{type(material).__name__}.export(features=...) returned {keys} without 'albedo' [N, 3] in "
                    f"[0, 1]: the exporter bakes the material's albedo. Implement export() in the material, or set "
                    f"{_KEY}.save_texture=false to export the mesh without colour."
                )
            if albedo.shape != (p.shape[0], 3):
                raise ValueError(f"{type(material).__name__}.export() gave albedo of shape {tuple(albedo.shape)}; "
                                 f"expected [{p.shape[0]}, 3].")
            out[s:s + chunk] = albedo.detach().float().clamp(0.0, 1.0).cpu()
        return out


# -------------------------------------------------------------------------------------------------- helpers
def _show_progress() -> bool:
    """Progress bars and spinners on rank 0, in a terminal only (piped logs get the info lines)."""
    return get_rank() == 0 and sys.stderr.isatty() and sys.stdout.isatty()


def _device_of(module: Any) -> torch.device:
    dev = getattr(module, "device", None)
    if isinstance(dev, torch.device):
        return dev
    if isinstance(module, torch.nn.Module):
        for t in list(module.parameters()) + list(module.buffers()):
            return t.device
    return torch.device("cpu")


def _call_with_accepted(fn: Any, kwargs: Dict[str, Any]) -> Any:
    """Call ``fn`` with the keyword arguments its signature accepts (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return fn(**kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return fn(**kwargs)
    names = {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                  inspect.Parameter.KEYWORD_ONLY)}
    return fn(**{k: v for k, v in kwargs.items() if k in names})


def _xatlas_options(cls_name: str, options: Any, key: str) -> Dict[str, Any]:
    """Check option names and types against xatlas's ChartOptions / PackOptions; returns plain python values."""
    from threestudio.utils.imports import require

    xatlas = require("xatlas", "UV unwrapping for the mesh exporter", "pip install xatlas")
    proto = getattr(xatlas, cls_name)()
    valid = {k: getattr(proto, k) for k in dir(proto) if not k.startswith("_")}
    out: Dict[str, Any] = {}
    for k, v in dict(options).items():
        if k not in valid:
            from threestudio.registry import nearest

            close = nearest(k, list(valid))
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{_KEY}.{key}.{k}: unknown xatlas {cls_name} option.{hint} Valid options: "
                             f"{', '.join(sorted(valid))}.")
        kind = type(valid[k])
        try:
            if kind is bool:
                if not isinstance(v, (bool, int)):
                    raise TypeError
                out[k] = bool(v)
            else:
                out[k] = kind(v)
        except (TypeError, ValueError):
            raise ValueError(f"{_KEY}.{key}.{k}: expected a {kind.__name__}, got {v!r}.") from None
    return out


def _xatlas_in_process(v: np.ndarray, f: np.ndarray, chart: Dict[str, Any], pack: Dict[str, Any]
                       ) -> Dict[str, np.ndarray]:
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(v, f)
    co, po = xatlas.ChartOptions(), xatlas.PackOptions()
    for k, val in chart.items():
        setattr(co, k, val)
    for k, val in pack.items():
        setattr(po, k, val)
    atlas.generate(chart_options=co, pack_options=po)
    vmapping, indices, uvs = atlas[0]
    return {"vmapping": vmapping, "indices": indices, "uvs": uvs,
            "info": np.array([atlas.atlas_count, atlas.chart_count, atlas.width, atlas.height]),
            "utilization": np.array(atlas.utilization, dtype=np.float64).reshape(-1)}


def _signal_name(num: int) -> str:
    import signal

    try:
        return signal.Signals(num).name
    except ValueError:
        return "unknown signal"


def _xatlas_in_subprocess(v: np.ndarray, f: np.ndarray, chart: Dict[str, Any], pack: Dict[str, Any]
                          ) -> Dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="threestudio-xatlas-") as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, v=v, f=f)
        proc = subprocess.run([sys.executable, "-c", _XATLAS_WORKER, src, dst,
                               json.dumps({"chart": chart, "pack": pack})],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.isfile(dst):
            how = (f"was killed by signal {-proc.returncode} ({_signal_name(-proc.returncode)})"
                   if proc.returncode < 0 else f"exited with status {proc.returncode}")
            tail = (proc.stderr or "").strip().splitlines()[-5:]
            raise RuntimeError(
                f"xatlas UV unwrapping of {f.shape[0]} faces {how}"
                + (":\n  " + "\n  ".join(tail) if tail else ".")
                + f"\nxatlas is known to crash on some meshes. Try {_KEY}.max_faces lower (e.g. 100000), "
                  f"different {_KEY}.xatlas_chart_options (e.g. {{max_chart_area: 0.5}}), or "
                  f"{_KEY}.save_uv=false for an OBJ/GLB with vertex colours."
            )
        with np.load(dst) as data:
            return {k: data[k] for k in data.files}

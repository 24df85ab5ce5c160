"""Make splatter training data for a folder of meshes: per mesh, the renders of its input, splatter, extra and
held-out cameras, and its ground-truth splatter fitted through our gaussian rasterizer (:mod:`.gt_fit`). The CLI is
``custom/zero1tog/scripts/make_gt_splatters.py``; the layout is in :mod:`.store`."""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import store
from .gt_fit import FitConfig, fit_splatter
from .meshes import ObjectMesh, list_meshes, load_object_mesh, render_mesh
from .views import object_cameras


@dataclass
class MakeConfig:
    fit: FitConfig = field(default_factory=FitConfig)
    view_set: str = "wonder3d"
    distance: float = 1.5
    object_radius: float = 0.45  # farthest vertex from the object centre
    mesh_up: str = "+z"  # the mesh files' up axis
    input_elevation_range: Tuple[float, float] = (0.0, 30.0)  # per object, uniform
    elevation_range: Tuple[float, float] = (0.0, 40.0)  # extra and held-out cameras
    n_extra: int = 14  # supervision cameras besides the 6 splatter views
    n_heldout: int = 4
    seed: int = 0

    def params(self) -> Dict[str, Any]:
        return json_safe(asdict(self))


def json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def object_seed(name: str, seed: int) -> int:
    return (zlib.crc32(name.encode("utf-8")) + 1_000_003 * int(seed)) % (2**31)


def make_object(mesh_path: str, out_folder: str, cfg: MakeConfig,
                progress: Optional[Callable[[int, float], None]] = None, device: Any = "cpu") -> Dict[str, float]:
    """Render and fit one mesh into ``out_folder`` (renders and fit on ``device``: a CUDA device makes the
    gaussian rasterizer gsplat); returns the fit's statistics."""
    name = os.path.splitext(os.path.basename(mesh_path))[0]
    gen = torch.Generator().manual_seed(object_seed(name, cfg.seed))
    lo, hi = cfg.input_elevation_range
    elev = float(lo + (hi - lo) * torch.rand(1, generator=gen))
    azim = float(360.0 * torch.rand(1, generator=gen))
    cams = object_cameras(cfg.view_set, elev, azim, cfg.distance, cfg.n_extra, cfg.n_heldout,
                          cfg.elevation_range, gen)
    mesh = load_object_mesh(mesh_path, cfg.object_radius, up=cfg.mesh_up).transformed(cams.frame)
    dev = torch.device(device)
    if dev.type != "cpu":
        mesh = ObjectMesh(*(None if x is None else x.to(dev) for x in
                            (mesh.v_pos, mesh.faces, mesh.colors, mesh.uv, mesh.texture)))
        cams = dataclasses.replace(cams, c2w={g: c.to(dev) for g, c in cams.c2w.items()})
    rres = cfg.fit.render_resolution or cfg.fit.resolution
    renders = {g: render_mesh(mesh, c2w, cams.fovy_deg, rres, rres, cfg.fit.supersample)["rgba"]
               for g, c2w in cams.c2w.items() if len(c2w)}
    fit_cfg = FitConfig(**{**asdict(cfg.fit), "seed": object_seed(name, cfg.seed)})
    result = fit_splatter(mesh, cams, fit_cfg, targets=renders, progress=progress)
    cameras = {
        "view_set": cfg.view_set, "fovy_deg": cams.fovy_deg, "distance": cams.distance,
        "resolution": cfg.fit.resolution, "render_resolution": rres, "mapping": cfg.fit.mapping,
        "frame": cams.frame.tolist(), "source": os.path.abspath(mesh_path),
        "views": {g: {"c2w": c.tolist(), "elevation_deg": cams.elevation_deg[g].tolist(),
                      "azimuth_deg": cams.azimuth_deg[g].tolist()} for g, c in cams.c2w.items()},
        "fit": result.stats,
    }
    store.write_object(out_folder, cameras, {g: r for g, r in renders.items()}, result.splatter, cfg.params())
    return result.stats


def check_folders(mesh_folder: str, out: str) -> None:
    """Refuse an output folder that is, or lies inside, the mesh folder (or contains it)."""
    a, b = os.path.realpath(mesh_folder), os.path.realpath(out)
    if a == b or b.startswith(a + os.sep) or a.startswith(b + os.sep):
        raise ValueError(f"the output folder {out!r} must lie outside the mesh folder {mesh_folder!r} (and not "
                         f"contain it): the mesh folder is only read")


def make_dataset(mesh_folder: str, out: str, cfg: MakeConfig, show_progress: bool = True,
                 log: Callable[[str], None] = print, device: Any = "cpu") -> Dict[str, Dict[str, float]]:
    """Every mesh of ``mesh_folder`` into ``out`` (complete objects with the same parameters are skipped), fitted
    on ``device``."""
    check_folders(mesh_folder, out)
    paths = list_meshes(mesh_folder)
    if not paths:
        raise FileNotFoundError(f"no mesh files ({', '.join(e[1:] for e in ('.obj', '.ply', '.glb'))}, ...) in "
                                f"{mesh_folder}")
    store.claim(out)
    params = cfg.params()
    results: Dict[str, Dict[str, float]] = {}
    todo: List[str] = []
    for p in paths:
        folder = os.path.join(out, os.path.splitext(os.path.basename(p))[0])
        if store.is_complete(folder, params):
            log(f"skip {os.path.basename(p)} (complete)")
        else:
            todo.append(p)
    if show_progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeRemainingColumn()) as bar:
            objs = bar.add_task("objects", total=len(todo))
            steps = bar.add_task("fit", total=cfg.fit.steps)
            for p in todo:
                name = os.path.splitext(os.path.basename(p))[0]
                bar.reset(steps, total=cfg.fit.steps, description=f"fit {name}")
                def cb(step: int, loss: float, name: str = name) -> None:
                    bar.update(steps, completed=step + 1, description=f"fit {name} loss {loss:.2e}")

                results[name] = make_object(p, os.path.join(out, name), cfg, cb, device)
                bar.advance(objs)
    else:
        for p in todo:
            name = os.path.splitext(os.path.basename(p))[0]
            results[name] = make_object(p, os.path.join(out, name), cfg, device=device)
    for name, st in results.items():
        h = st.get("psnr_heldout", math.nan)
        log(f"{name}: PSNR supervision {st['psnr_supervision']:.2f} dB, held-out {h:.2f} dB, {st['seconds']:.1f} s")
    return results

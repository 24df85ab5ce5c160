"""A trained scene as a teacher: load any reconstruction trial (NeRF or gaussians, edited or not) and render pseudo
views for the NeLF student.

* :func:`load_teacher` rebuilds a trial's data module and system from its ``configs/parsed.yaml`` and loads its
  checkpoint (the same modules and weights a ``--test`` run would use; nothing in the trial is written).
* :func:`pseudo_poses` draws camera poses between the training cameras: a random camera and one of its
  ``neighbours`` nearest cameras (by position, so the path stays among the cameras whatever order they were taken
  in), a random point between them (positions interpolated linearly, rotations by spherical interpolation), then
  jittered (position by ``jitter`` times the typical distance to the nearest camera, rotation by up to
  ``jitter_deg`` degrees).
* :func:`render` renders one pinhole view with the teacher (rays for NeRF renderers, cameras for rasterizers) and
  returns its colour and expected distance.
* :func:`make_pseudo_data` writes the student's dataset (:mod:`custom.mobilegen3d.pseudo_data`): ``n`` pseudo
  views plus the data's held-out cameras (listed in ``holdout.json``: the student is evaluated there against the
  teacher), at the student's output size, with the sampling range ``near``/``far`` taken from the teacher's depths.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from threestudio.ops import cameras as cam


def load_teacher(source: str, device: Optional[str] = None) -> Tuple[Any, Any, Any]:
    """(system, data module, config) of the trial or checkpoint ``source``, in eval mode on ``device``."""
    from omegaconf import OmegaConf

    import threestudio
    from threestudio.utils.extensions import load_extension_folders
    from threestudio.utils.run_control import check_checkpoint_fits, inspect_checkpoint
    from threestudio.utils.trials import CONFIG_DIR, resolve_checkpoint, trial_of_checkpoint

    load_extension_folders([], include_custom=True)
    ckpt_path = resolve_checkpoint(source, key="--teacher")
    parsed = os.path.join(trial_of_checkpoint(ckpt_path), CONFIG_DIR, "parsed.yaml")
    if not os.path.isfile(parsed):
        from threestudio.utils.config import ConfigError, ConfigIssue

        raise ConfigError([ConfigIssue("--teacher", f"{ckpt_path} is not in a trial folder with {CONFIG_DIR}/"
                                       "parsed.yaml", "", "pass a trial folder written by launch.py")])
    cfg = OmegaConf.load(parsed)
    dm = threestudio.find(cfg.data_type, "data", "data_type")(cfg.data)
    system = threestudio.find(cfg.system_type, "system", "system_type")(cfg.system, resumed=True)
    ckpt = inspect_checkpoint(ckpt_path, key="--teacher")
    check_checkpoint_fits(ckpt, ckpt_path, system, str(cfg.system_type), str(cfg.name), key="--teacher")
    epoch, step = int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0))
    del ckpt
    system.set_resume_status(epoch, step)
    system.do_update_step(epoch, step, on_load_weights=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return system.to(device).eval(), dm, cfg


def _quat(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_quat()


def _slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(d)
    return (math.sin((1 - t) * theta) * q0 + math.sin(t * theta) * q1) / math.sin(theta)


def pseudo_poses(c2w: np.ndarray, n: int, jitter: float = 0.15, jitter_deg: float = 3.0, seed: int = 0,
                 neighbours: int = 4) -> np.ndarray:
    """``n`` OpenGL camera-to-world poses [n, 4, 4] around the training poses ``c2w`` [M, 4, 4]; see the module
    docstring."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    m = c2w.shape[0]
    centers = c2w[:, :3, 3]
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    near = np.argsort(dist, axis=1)[:, : max(1, min(neighbours, m - 1))] if m > 1 else np.zeros((1, 1), int)
    step = float(np.median(dist.min(axis=1))) if m > 1 else 1.0
    quats = np.stack([_quat(c2w[i, :3, :3]) for i in range(m)])
    out = np.zeros((n, 4, 4))
    out[:, 3, 3] = 1.0
    for k in range(n):
        a = int(rng.integers(m))
        b = int(near[a, rng.integers(near.shape[1])]) if m > 1 else a
        t = float(rng.random())
        pos = (1 - t) * centers[a] + t * centers[b] + rng.normal(0.0, jitter * step, 3)
        q = _slerp(quats[a], quats[b], t)
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis) + 1e-12
        wobble = Rotation.from_rotvec(axis * math.radians(jitter_deg) * rng.random())
        out[k, :3, :3] = (Rotation.from_quat(q) * wobble).as_matrix()
        out[k, :3, 3] = pos
    return out


def student_size(width: int, height: int, long_side: int, scale: int) -> Tuple[int, int]:
    """(W, H) with the long side ``long_side``, the aspect kept, both multiples of ``scale``."""
    f = long_side / max(width, height)
    w = max(scale, int(round(width * f / scale)) * scale)
    h = max(scale, int(round(height * f / scale)) * scale)
    return w, h


@torch.no_grad()
def render(system: Any, c2w: torch.Tensor, intrinsics: Tuple[float, float, float, float], height: int,
           width: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """rgb [H, W, 3] in [0, 1], the depth of the surfaces seen [H, W] (expected depth divided by opacity) and the
    opacity [H, W] of one pinhole view (c2w [4, 4], OpenGL)."""
    from threestudio.models.renderers.base import Rasterizer

    dev = next(system.parameters()).device
    c2w = c2w.to(dev).float()
    fx, fy, cx, cy = intrinsics
    if isinstance(system.renderer, Rasterizer):
        out = system.renderer(c2w=c2w[None], height=height, width=width,
                              intrinsics=torch.tensor([[fx, fy, cx, cy]], device=dev))
        depth = out["depth"][0, ..., 0]  # already normalised by the opacity (expected camera z)
    else:
        dirs = cam.get_ray_directions(height, width, (fx, fy), principal=(cx, cy), device=dev)
        rays_o, rays_d = cam.get_rays(dirs, c2w)
        out = system.renderer(rays_o[None], rays_d[None])
        depth = out["depth"][0, ..., 0] / out["opacity"][0, ..., 0].clamp_min(1e-6)
    return out["comp_rgb"][0].clamp(0, 1), depth, out["opacity"][0, ..., 0]


def _cameras(dm: Any) -> Tuple[np.ndarray, List[float], int, int]:
    cams = dm.train_cameras()
    c2w = np.stack([c["c2w"].double().numpy() for c in cams])
    k = cams[0]
    return c2w, [k["fx"], k["fy"], k["cx"], k["cy"]], int(k["width"]), int(k["height"])


def _held_out(dm: Any) -> List[np.ndarray]:
    p = dm._parse()
    train = {id(r) for r in p["splits"]["train"]}
    return [dm._c2w(r).double().numpy() for r in p["splits"]["test"] if id(r) not in train]


def make_pseudo_data(source: str, out: str, n: int, long_side: int = 512, scale: int = 8, jitter: float = 0.15,
                     jitter_deg: float = 3.0, seed: int = 0, device: Optional[str] = None,
                     progress: bool = True, overwrite: bool = False) -> Dict[str, Any]:
    """Render ``n`` pseudo views (+ the held-out cameras) of the trial ``source`` into ``out``. Returns a summary."""
    from custom.mobilegen3d.pseudo_data import PseudoDataWriter

    system, dm, cfg = load_teacher(source, device)
    c2w_train, (fx, fy, cx, cy), w0, h0 = _cameras(dm)
    W, H = student_size(w0, h0, long_side, scale)
    sx, sy = W / w0, H / h0
    intr = (fx * sx, fy * sy, cx * sx, cy * sy)
    poses = pseudo_poses(c2w_train, n, jitter, jitter_deg, seed)
    held = _held_out(dm)
    all_poses = np.concatenate([poses, np.stack(held)]) if held else poses
    # the student's sampling range: where the teacher's surfaces are, from a few low-resolution probes
    probe = []
    for k in np.linspace(0, len(all_poses) - 1, min(16, len(all_poses))).astype(int):
        _, d, a = render(system, torch.from_numpy(all_poses[k]),
                         (intr[0] / 4, intr[1] / 4, intr[2] / 4, intr[3] / 4), max(H // 4, 1), max(W // 4, 1))
        probe.append(d[a > 0.5].flatten().float().cpu())  # where the teacher sees a surface
    depth = torch.cat(probe)
    depth = depth[torch.isfinite(depth) & (depth > 0)]
    near = float(torch.quantile(depth, 0.01)) * 0.8 if depth.numel() else 0.05
    far = float(torch.quantile(depth, 0.98)) * 1.2 if depth.numel() else 10.0
    writer = PseudoDataWriter(out, len(all_poses), H, W, H // scale, W // scale, list(intr), near, far,
                              source=os.path.abspath(source), overwrite=overwrite)
    iterator: Any = range(len(all_poses))
    if progress:
        from rich.progress import track

        iterator = track(iterator, description=f"Rendering {len(all_poses)} pseudo views at {W}x{H}")
    for i in iterator:
        c2w = torch.from_numpy(all_poses[i])
        rgb, _, _ = render(system, c2w, intr, H, W)
        writer.write(i, rgb.cpu(), c2w.float())
    holdout = list(range(n, len(all_poses)))
    writer.close(holdout=holdout)
    return {"out": out, "n": n, "held_out": len(holdout), "width": W, "height": H, "near": near, "far": far,
            "system": str(cfg.system_type)}

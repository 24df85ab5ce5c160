"""On-disk layout of splatter training data (written by ``scripts/make_gt_splatters.py``, read by :mod:`.data`).

    OUT/
      .zero1tog-splatter-data        written first: the folder belongs to the tool (it refuses other non-empty folders)
      <object>/                      one per mesh (the mesh file's name without extension)
        cameras.json                 view set, fovy, distance, the world -> object frame, and per group (input,
                                     splatter, extra, heldout) the OpenGL c2w matrices in the object frame with their
                                     world elevation/azimuth; the source mesh; the fit's statistics
        rgba/<group>_<i>.png         8-bit straight RGBA renders of the mesh (render resolution)
        splatter.safetensors         "splatter": float32 [V, 14, H, W], activated (see splatter.py)
        complete.json                written last: the parameters; an object with the same parameters is skipped

All matrices are in the object frame (:mod:`.views`): the first splatter camera at (0, 0, d), identity rotation.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from threestudio.utils.saving import atomic_write_bytes, atomic_write_text, encode_png

OWNER_MARKER = ".zero1tog-splatter-data"
COMPLETE = "complete.json"
GROUPS = ("input", "splatter", "extra", "heldout")
FORMAT_VERSION = 1


def is_ours(root: str) -> bool:
    return os.path.isfile(os.path.join(root, OWNER_MARKER))


def claim(root: str) -> None:
    """Make ``root`` ours, or raise if it is a non-empty folder of something else."""
    if os.path.isdir(root) and os.listdir(root) and not is_ours(root):
        raise FileExistsError(f"{root} is not empty and was not written by make_gt_splatters.py; give a new or "
                              f"empty output folder")
    os.makedirs(root, exist_ok=True)
    atomic_write_text(os.path.join(root, OWNER_MARKER), json.dumps({"format_version": FORMAT_VERSION}) + "\n")


def is_complete(folder: str, params: Dict[str, Any]) -> bool:
    path = os.path.join(folder, COMPLETE)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("params") == params


def list_objects(root: str) -> List[str]:
    """Names of the complete objects under ``root`` (sorted)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"splatter data folder {root!r} does not exist; make it with "
                                f"custom/zero1tog/scripts/make_gt_splatters.py MESH_FOLDER {root}")
    return sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, COMPLETE)))


def _u8(rgba: torch.Tensor) -> np.ndarray:
    return (rgba.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def write_object(folder: str, cameras: Dict[str, Any], renders: Dict[str, torch.Tensor], splatter: torch.Tensor,
                 params: Dict[str, Any]) -> None:
    """Write one object (``renders``: group -> straight RGBA [N, H, W, 4] in [0, 1])."""
    from safetensors.torch import save as st_save

    os.makedirs(os.path.join(folder, "rgba"), exist_ok=True)
    done = os.path.join(folder, COMPLETE)
    if os.path.exists(done):
        os.remove(done)
    for group, imgs in renders.items():
        for i, img in enumerate(imgs):
            atomic_write_bytes(os.path.join(folder, "rgba", f"{group}_{i:03d}.png"), encode_png(_u8(img)))
    atomic_write_bytes(os.path.join(folder, "splatter.safetensors"),
                       st_save({"splatter": splatter.detach().float().cpu().contiguous()}))
    atomic_write_text(os.path.join(folder, "cameras.json"), json.dumps(cameras, indent=1) + "\n")
    atomic_write_text(done, json.dumps({"format_version": FORMAT_VERSION, "params": params}, indent=1) + "\n")


def read_png(path: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    return torch.from_numpy(a.copy())


def read_object(folder: str, groups: Optional[List[str]] = None) -> Dict[str, Any]:
    """{"cameras": the JSON, "splatter": [V, 14, H, W], "rgba": {group: [N, H, W, 4]}, "c2w": {group: [N, 4, 4]}}."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, "cameras.json")) as f:
        cams = json.load(f)
    out: Dict[str, Any] = {"cameras": cams, "rgba": {}, "c2w": {}}
    out["splatter"] = load_file(os.path.join(folder, "splatter.safetensors"))["splatter"]
    for g in groups or GROUPS:
        c2w = torch.tensor(cams["views"][g]["c2w"], dtype=torch.float32).reshape(-1, 4, 4)
        out["c2w"][g] = c2w
        imgs = [read_png(os.path.join(folder, "rgba", f"{g}_{i:03d}.png")) for i in range(c2w.shape[0])]
        out["rgba"][g] = torch.stack(imgs) if imgs else torch.zeros(0, 1, 1, 4)
    return out

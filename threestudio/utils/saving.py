"""Writing outputs: images, grids, videos, meshes, point clouds and metrics, all atomically, rank 0 only.

Every file is first written to a temporary name in the same folder, flushed to disk, and then renamed over the
target, so a crash or kill never leaves a truncated image, mesh or checkpoint behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from threestudio.utils.log import get_rank, warn

ArrayLike = Union[np.ndarray, torch.Tensor]


# ------------------------------------------------------------------------------------------------ atomic files
@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path`` (same extension); on success it replaces ``path`` atomically."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    tmp = os.path.join(folder, f".{stem}.tmp-{os.getpid()}{ext}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------------------------------------ conversions
def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def to_uint8_image(img: ArrayLike, data_range: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """[H, W] or [H, W, C] (C in 1, 3, 4) floats in ``data_range`` -> uint8 [H, W, C]."""
    a = to_numpy(img).astype(np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Expected an image of shape [H, W] or [H, W, C] with C in (1, 3, 4); got {a.shape}.")
    lo, hi = float(data_range[0]), float(data_range[1])
    a = (np.clip(a, lo, hi) - lo) / max(hi - lo, 1e-12)
    return (a * 255.0 + 0.5).astype(np.uint8)


def colormap_jet(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB in [0, 1], a jet-like ramp (blue, cyan, yellow, red)."""
    x = np.clip(x, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return np.stack([r, g, b], axis=-1)


def grayscale_to_rgb(img: ArrayLike, data_range: Optional[Sequence[float]] = (0.0, 1.0),
                     cmap: Optional[str] = None) -> np.ndarray:
    a = to_numpy(img).astype(np.float32)
    if a.ndim == 3:
        a = a[..., 0]
    if data_range is None:
        lo, hi = float(a.min()), float(a.max())
    else:
        lo, hi = float(data_range[0]), float(data_range[1])
    a = np.clip((a - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    if cmap == "jet":
        return colormap_jet(a)
    return np.repeat(a[..., None], 3, axis=-1)


def encode_png(img_u8: np.ndarray) -> bytes:
    from PIL import Image

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[img_u8.shape[-1]]
    arr = img_u8[..., 0] if img_u8.shape[-1] == 1 else img_u8
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even height and width (yuv420p needs it)."""
    h, w = frame.shape[:2]
    ph, pw = h % 2, w % 2
    if ph or pw:
        frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return frame


def write_video(path: str, frames: Sequence[np.ndarray], fps: int = 30) -> str:
    """Write uint8 frames [H, W, 3] as MP4 (imageio-ffmpeg) or, if that is unavailable, as GIF. Returns the path."""
    if len(frames) == 0:
        raise ValueError(f"No frames to write to {path}.")
    frames = [_even(np.asarray(f)[..., :3]) for f in frames]
    root, ext = os.path.splitext(path)
    if ext.lower() == ".mp4":
        try:
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401

            with atomic_output(path) as tmp:
                imageio.mimsave(tmp, frames, fps=fps, macro_block_size=1, format="FFMPEG",
                                codec="libx264", pixelformat="yuv420p", quality=8)
            return path
        except ImportError:
            warn(f"imageio-ffmpeg is not installed: writing {root}.gif instead of {path} "
                 f"(pip install imageio-ffmpeg for MP4).")
            path = root + ".gif"
    from PIL import Image

    pil = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    pil[0].save(buf, format="GIF", save_all=True, append_images=pil[1:], duration=int(1000 / fps), loop=0)
    atomic_write_bytes(path, buf.getvalue())
    return path


# ------------------------------------------------------------------------------------------------ meshes, points
def write_obj(path: str, v_pos: np.ndarray, t_idx: np.ndarray, v_tex: Optional[np.ndarray] = None,
              t_tex_idx: Optional[np.ndarray] = None, v_nrm: Optional[np.ndarray] = None,
              texture: Optional[np.ndarray] = None, v_rgb: Optional[np.ndarray] = None,
              material_name: str = "material0") -> List[str]:
    """Write OBJ (+ MTL + PNG texture when ``texture`` and UVs are given). Returns the written paths.

    Arrays: v_pos [V, 3]; t_idx [F, 3] (0-based); v_tex [T, 2] in [0, 1] (v up); t_tex_idx [F, 3];
    texture [H, W, 3] float in [0, 1] with row 0 at the top (v = 1); v_rgb [V, 3] in [0, 1] (vertex colours).
    """
    root, _ = os.path.splitext(path)
    name = os.path.basename(root)
    written = [path]
    lines: List[str] = ["# written by threestudio"]
    has_tex = texture is not None and v_tex is not None
    if has_tex:
        lines.append(f"mtllib {name}.mtl")
    for i, p in enumerate(v_pos):
        if v_rgb is not None:
            c = v_rgb[i]
            lines.append(f"v {p[0]:.6f} {p[1]:.6f} {p[2]:.6f} {c[0]:.4f} {c[1]:.4f} {c[2]:.4f}")
        else:
            lines.append(f"v {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}")
    if v_tex is not None:
        lines += [f"vt {t[0]:.6f} {t[1]:.6f}" for t in v_tex]
    if v_nrm is not None:
        lines += [f"vn {n[0]:.6f} {n[1]:.6f} {n[2]:.6f}" for n in v_nrm]
    if has_tex:
        lines.append(f"usemtl {material_name}")
    tt = t_tex_idx if t_tex_idx is not None else t_idx
    for f_i, f in enumerate(t_idx):
        a, b, c = (int(x) + 1 for x in f)
        if v_tex is not None and v_nrm is not None:
            ta, tb, tc = (int(x) + 1 for x in tt[f_i])
            lines.append(f"f {a}/{ta}/{a} {b}/{tb}/{b} {c}/{tc}/{c}")
        elif v_tex is not None:
            ta, tb, tc = (int(x) + 1 for x in tt[f_i])
            lines.append(f"f {a}/{ta} {b}/{tb} {c}/{tc}")
        elif v_nrm is not None:
            lines.append(f"f {a}//{a} {b}//{b} {c}//{c}")
        else:
            lines.append(f"f {a} {b} {c}")
    atomic_write_text(path, "\n".join(lines) + "\n")
    if has_tex:
        tex_name = f"{name}_texture_kd.png"
        tex_path = os.path.join(os.path.dirname(path), tex_name)
        atomic_write_bytes(tex_path, encode_png(to_uint8_image(texture)))
        mtl = (f"newmtl {material_name}\nKa 1.0 1.0 1.0\nKd 1.0 1.0 1.0\nKs 0.0 0.0 0.0\nd 1.0\nillum 1\n"
               f"map_Kd {tex_name}\n")
        mtl_path = root + ".mtl"
        atomic_write_text(mtl_path, mtl)
        written += [mtl_path, tex_path]
    return written


def write_glb(path: str, v_pos: np.ndarray, t_idx: np.ndarray, v_tex: Optional[np.ndarray] = None,
              texture: Optional[np.ndarray] = None, v_rgb: Optional[np.ndarray] = None,
              v_nrm: Optional[np.ndarray] = None) -> str:
    """Write a binary glTF through trimesh. UVs are per vertex here (split seams first, as xatlas does)."""
    import trimesh
    from PIL import Image

    kwargs: Dict[str, Any] = {"process": False}
    if v_nrm is not None:
        kwargs["vertex_normals"] = v_nrm
    if texture is not None and v_tex is not None:
        if len(v_tex) != len(v_pos):
            raise ValueError("write_glb needs one UV per vertex (len(v_tex) == len(v_pos)); split UV seams first.")
        img = Image.fromarray(to_uint8_image(texture)[..., :3])
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=img, metallicFactor=0.0,
                                                       roughnessFactor=1.0)
        kwargs["visual"] = trimesh.visual.TextureVisuals(uv=v_tex, image=img, material=material)
    elif v_rgb is not None:
        kwargs["vertex_colors"] = (np.clip(v_rgb, 0, 1) * 255).astype(np.uint8)
    mesh = trimesh.Trimesh(vertices=v_pos, faces=t_idx, **kwargs)
    data = mesh.export(file_type="glb")
    atomic_write_bytes(path, data)
    return path


def write_ply_points(path: str, points: np.ndarray, colors: Optional[np.ndarray] = None,
                     normals: Optional[np.ndarray] = None) -> str:
    """Binary little-endian PLY point cloud: float x y z [nx ny nz] [uchar red green blue]."""
    points = np.asarray(points, dtype=np.float32)
    n = points.shape[0]
    props = ["property float x", "property float y", "property float z"]
    cols = [points]
    dtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        props += ["property float nx", "property float ny", "property float nz"]
        dtype += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        props += ["property uchar red", "property uchar green", "property uchar blue"]
        dtype += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    rec = np.empty(n, dtype=dtype)
    rec["x"], rec["y"], rec["z"] = points[:, 0], points[:, 1], points[:, 2]
    if normals is not None:
        nrm = np.asarray(normals, dtype=np.float32)
        rec["nx"], rec["ny"], rec["nz"] = nrm[:, 0], nrm[:, 1], nrm[:, 2]
    if colors is not None:
        c = np.asarray(colors)
        if c.dtype != np.uint8:
            c = (np.clip(c, 0, 1) * 255 + 0.5).astype(np.uint8)
        rec["red"], rec["green"], rec["blue"] = c[:, 0], c[:, 1], c[:, 2]
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {n}", *props,
                        "end_header"]) + "\n"
    atomic_write_bytes(path, header.encode("ascii") + rec.tobytes())
    return path


def read_ply_points(path: str) -> Dict[str, np.ndarray]:
    """Read the vertex element of a PLY point cloud (binary little-endian, as :func:`write_ply_points` writes, or
    ASCII, as COLMAP/nerfstudio's ``sparse_pc.ply``): a dict of property name -> array [N]. Properties of other
    elements (faces, ...) after the vertices are ignored."""
    with open(path, "rb") as f:
        data = f.read()
    marker = b"end_header\n"
    if not data.startswith(b"ply") or marker not in data:
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic or no end_header)")
    end = data.index(marker) + len(marker)
    header = data[:end].decode("ascii", errors="replace").splitlines()
    fmt = next((h.split()[1] for h in header if h.startswith("format ")), "")
    if fmt not in ("binary_little_endian", "ascii"):
        raise ValueError(f"{path}: PLY format '{fmt}' is not supported (binary_little_endian or ascii)")
    types = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "uint8": "u1",
             "char": "i1", "int8": "i1", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
             "short": "<i2", "int16": "<i2", "ushort": "<u2", "uint16": "<u2"}
    n, fields, in_vertex = 0, [], False
    for line in header:
        parts = line.split()
        if parts[:1] == ["element"]:
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                n = int(parts[2])
        elif parts[:1] == ["property"] and in_vertex:
            if parts[1] == "list" or parts[1] not in types:
                raise ValueError(f"{path}: vertex property '{line.strip()}' is not supported")
            fields.append((parts[2], types[parts[1]]))
    if fmt == "binary_little_endian":
        rec = np.frombuffer(data[end:], dtype=np.dtype(fields), count=n)
        return {name: np.array(rec[name]) for name, _ in fields}
    rows = data[end:].decode("ascii", errors="replace").split("\n")[:n]
    table = np.array([r.split()[: len(fields)] for r in rows], dtype=np.float64).reshape(n, len(fields))
    return {name: table[:, i].astype(np.dtype(t)) for i, (name, t) in enumerate(fields)}


# ------------------------------------------------------------------------------------------------ the mixin
class SaverMixin:
    """Adds ``save_*`` methods that write under the trial's ``save/`` folder (global rank 0 only)."""

    _save_dir: Optional[str] = None

    def set_save_dir(self, save_dir: str) -> None:
        self._save_dir = save_dir

    def get_save_dir(self) -> str:
        if self._save_dir is None:
            raise ValueError("Save dir is not set: call set_save_dir() first (launch.py does this).")
        return self._save_dir

    @property
    def _is_writer(self) -> bool:
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            return trainer.global_rank == 0
        return get_rank() == 0

    def get_save_path(self, filename: str) -> str:
        path = os.path.join(self.get_save_dir(), filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def save_image(self, filename: str, img: ArrayLike, data_range: Sequence[float] = (0, 1)) -> Optional[str]:
        if not self._is_writer:
            return None
        path = self.get_save_path(filename)
        atomic_write_bytes(path, encode_png(to_uint8_image(img, data_range)))
        return path

    def save_image_grid(self, filename: str, imgs: List[Dict[str, Any]], align: int = 0) -> Optional[str]:
        """Save images side by side. Each item: ``{"type": "rgb"|"grayscale", "img": [H,W,C], "kwargs": {...}}``
        (rgb kwargs: data_range; grayscale kwargs: data_range (None = min/max), cmap (None|"jet"))."""
        if not self._is_writer:
            return None
        row = []
        for item in imgs:
            kind, img, kw = item["type"], item["img"], item.get("kwargs", {})
            if kind == "rgb":
                a = to_uint8_image(img, kw.get("data_range", (0, 1)))[..., :3]
            elif kind == "grayscale":
                a = to_uint8_image(grayscale_to_rgb(img, kw.get("data_range", (0, 1)), kw.get("cmap")))
            else:
                raise ValueError(f"Unknown image type '{kind}' in save_image_grid (use 'rgb' or 'grayscale').")
            if a.shape[-1] == 1:
                a = np.repeat(a, 3, axis=-1)
            row.append(a)
        h = max(a.shape[0] for a in row)
        row = [np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0))) for a in row]
        grid = np.concatenate(row, axis=1)
        path = self.get_save_path(filename)
        atomic_write_bytes(path, encode_png(grid))
        return path

    def save_video(self, filename: str, frames: Sequence[ArrayLike], fps: int = 30) -> Optional[str]:
        if not self._is_writer:
            return None
        u8 = [f if (isinstance(f, np.ndarray) and f.dtype == np.uint8) else to_uint8_image(f) for f in frames]
        return write_video(self.get_save_path(filename), u8, fps=fps)

    def save_img_sequence(self, filename: str, img_dir: str, matcher: str = r"(\d+)\.png",
                          save_format: str = "mp4", fps: int = 30) -> Optional[str]:
        """Turn the numbered PNGs in ``save/<img_dir>`` into ``save/<filename>.<save_format>``."""
        if not self._is_writer:
            return None
        from PIL import Image

        folder = os.path.join(self.get_save_dir(), img_dir)
        pat = re.compile(matcher)
        names = [n for n in os.listdir(folder) if pat.search(n)]
        names.sort(key=lambda n: int(pat.search(n).group(1)))
        frames = [np.asarray(Image.open(os.path.join(folder, n)).convert("RGB")) for n in names]
        return write_video(self.get_save_path(f"{filename}.{save_format}"), frames, fps=fps)

    def save_mesh(self, filename: str, v_pos: ArrayLike, t_pos_idx: ArrayLike, v_tex: Optional[ArrayLike] = None,
                  t_tex_idx: Optional[ArrayLike] = None, texture: Optional[ArrayLike] = None,
                  v_rgb: Optional[ArrayLike] = None, v_nrm: Optional[ArrayLike] = None,
                  formats: Sequence[str] = ("obj", "glb")) -> List[str]:
        """Save a mesh as OBJ (+MTL+PNG) and/or GLB. ``filename`` has no extension (e.g. 'it1000-export/model')."""
        if not self._is_writer:
            return []
        arr = {k: (None if v is None else to_numpy(v)) for k, v in dict(
            v_pos=v_pos, v_tex=v_tex, texture=texture, v_rgb=v_rgb, v_nrm=v_nrm).items()}
        faces = to_numpy(t_pos_idx).astype(np.int64)
        tfaces = None if t_tex_idx is None else to_numpy(t_tex_idx).astype(np.int64)
        base = self.get_save_path(filename)
        out: List[str] = []
        for fmt in formats:
            if fmt == "obj":
                out += write_obj(base + ".obj", arr["v_pos"], faces, arr["v_tex"], tfaces, arr["v_nrm"],
                                 arr["texture"], arr["v_rgb"])
            elif fmt == "glb":
                out.append(write_glb(base + ".glb", arr["v_pos"], faces, arr["v_tex"], arr["texture"], arr["v_rgb"],
                                     arr["v_nrm"]))
            else:
                raise ValueError(f"Unknown mesh format '{fmt}' (use 'obj' or 'glb').")
        return out

    def save_point_cloud(self, filename: str, points: ArrayLike, colors: Optional[ArrayLike] = None,
                         normals: Optional[ArrayLike] = None) -> Optional[str]:
        if not self._is_writer:
            return None
        return write_ply_points(self.get_save_path(filename), to_numpy(points),
                                None if colors is None else to_numpy(colors),
                                None if normals is None else to_numpy(normals))

    def save_json(self, filename: str, payload: Any) -> Optional[str]:
        if not self._is_writer:
            return None
        path = self.get_save_path(filename)
        atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_json_default))
        return path

    def update_metrics(self, metrics: Dict[str, Any], filename: str = "metrics.json") -> Optional[str]:
        """Merge ``metrics`` into ``save/metrics.json`` (created if missing)."""
        if not self._is_writer:
            return None
        path = self.get_save_path(filename)
        current: Dict[str, Any] = {}
        if os.path.isfile(path):
            with open(path, "r", encoding="utf-8") as f:
                current = json.load(f)
        current.update(metrics)
        return self.save_json(filename, current)


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


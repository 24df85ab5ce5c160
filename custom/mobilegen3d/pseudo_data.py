"""Pseudo data: a teacher's renders that a NeLF student is distilled from (MobileR2L's "pseudo data").

A folder ``<out>/`` holds

* ``pseudo.json`` (written last, atomically; ``"complete": true``)::

      {"version": 1, "n": N, "height": H, "width": W, "lr_height": h, "lr_width": w,
       "intrinsics": [fx, fy, cx, cy], "near": near, "far": far, "source": "...", "complete": true}

  ``H = s * h`` and ``W = s * w`` (``s``: the student's upsampling, e.g. 8). ``intrinsics`` are pinhole intrinsics of
  the H x W renders in pixels, pixel centres at +0.5 (:mod:`threestudio.ops.cameras`). ``near``/``far``: the range
  along each (unit-length) ray that the student samples, in the teacher's world units.
* ``rgb.f16``: raw little-endian float16 [N, H, W, 3], the teacher's renders in [0, 1];
* ``c2w.f32``: raw little-endian float32 [N, 4, 4], OpenGL camera-to-world (x right, y up, looking along -z);
* ``holdout.json`` (optional): a JSON list of view indices kept out of training (validation/test views).

While a writer is open the folder has ``pseudo.partial.json`` (the same header without ``complete``) and
``written.u8`` (one byte per view), so an interrupted render can be continued with ``resume=True``; a folder
without ``pseudo.json`` is refused by the reader.

    w = PseudoDataWriter(out, n, H, W, h, w, [fx, fy, cx, cy], near, far, source="trial ...")
    for i, c2w in enumerate(poses):
        w.write(i, teacher_render(c2w), c2w)          # any order
    w.close(holdout=[0, 100, 200])                   # pseudo.json last

    data = PseudoData(out, rank=0, world_size=1)
    data.rgb(3), data.c2w(3), data.indices, data.low_res_rays(data.c2w(3))
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from threestudio.data.multiview import DatasetError
from threestudio.ops.cameras import get_ray_directions, get_rays

VERSION = 1
HEADER = "pseudo.json"
PARTIAL = "pseudo.partial.json"
RGB_FILE = "rgb.f16"
C2W_FILE = "c2w.f32"
WRITTEN_FILE = "written.u8"
HOLDOUT_FILE = "holdout.json"
RGB_DTYPE = np.dtype("<f2")
C2W_DTYPE = np.dtype("<f4")

Index = Union[int, Sequence[int], np.ndarray, torch.Tensor]


class PseudoDataError(DatasetError):
    """A missing, incomplete or malformed pseudo-data folder (a dataset error: launch.py exits with code 2)."""


def _atomic_json(path: str, payload: Any) -> None:
    from threestudio.utils.saving import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=1))


def check_header(h: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Validate a header's fields (types, positive sizes, integer upsampling, near < far); returns it."""
    need = ("n", "height", "width", "lr_height", "lr_width", "intrinsics", "near", "far")
    missing = [k for k in need if k not in h]
    if missing:
        raise PseudoDataError(f"{where}: missing field(s) {', '.join(missing)}.")
    for k in ("n", "height", "width", "lr_height", "lr_width"):
        v = h[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise PseudoDataError(f"{where}: '{k}' must be a positive integer, got {v!r}.")
    H, W, lh, lw = h["height"], h["width"], h["lr_height"], h["lr_width"]
    if H % lh or W % lw or H // lh != W // lw:
        raise PseudoDataError(f"{where}: the renders ({W}x{H}) must be the low-resolution grid ({lw}x{lh}) times one "
                              f"integer factor in both directions.")
    intr = h["intrinsics"]
    if (not isinstance(intr, (list, tuple)) or len(intr) != 4
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in intr)):
        raise PseudoDataError(f"{where}: 'intrinsics' must be [fx, fy, cx, cy] (4 finite numbers), got {intr!r}.")
    if intr[0] <= 0 or intr[1] <= 0:
        raise PseudoDataError(f"{where}: focal lengths must be positive, got fx={intr[0]}, fy={intr[1]}.")
    for k in ("near", "far"):
        v = h[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise PseudoDataError(f"{where}: '{k}' must be a finite number, got {v!r}.")
    if not 0 <= h["near"] < h["far"]:
        raise PseudoDataError(f"{where}: need 0 <= near < far, got near={h['near']}, far={h['far']}.")
    return h


# ------------------------------------------------------------------------------------------------------ writer
class PseudoDataWriter:
    """Writes a pseudo-data folder into preallocated, memory-mapped files (views in any order).

    ``overwrite``: replace a complete dataset already in ``out`` (else refused). ``resume``: continue an interrupted
    writer (same header) keeping the views it wrote (see :meth:`missing`). ``holdout``: indices for ``holdout.json``
    (may also be given to :meth:`close`)."""

    def __init__(self, out: str, n: int, height: int, width: int, lr_height: int, lr_width: int,
                 intrinsics: Sequence[float], near: float, far: float, source: str = "", *,
                 holdout: Optional[Sequence[int]] = None, overwrite: bool = False, resume: bool = False) -> None:
        self.out = os.path.abspath(out)
        self.header: Dict[str, Any] = check_header({
            "version": VERSION, "n": int(n), "height": int(height), "width": int(width),
            "lr_height": int(lr_height), "lr_width": int(lr_width),
            "intrinsics": [float(x) for x in intrinsics], "near": float(near), "far": float(far),
            "source": str(source)}, f"PseudoDataWriter({self.out})")
        self.holdout = None if holdout is None else list(holdout)
        self.closed = False
        os.makedirs(self.out, exist_ok=True)
        header_path, partial_path = os.path.join(self.out, HEADER), os.path.join(self.out, PARTIAL)
        if os.path.isfile(header_path):
            if not overwrite:
                raise PseudoDataError(f"{self.out} already holds a complete pseudo dataset ({HEADER}); pass "
                                      f"overwrite=True (make_pseudo_data.py --overwrite) to replace it, or write "
                                      f"into another folder.")
            os.remove(header_path)  # the folder is incomplete from now until close()
        shapes = self._shapes()
        reuse = False
        if resume and os.path.isfile(partial_path):
            with open(partial_path, "r", encoding="utf-8") as f:
                old = json.load(f)
            if {k: v for k, v in old.items() if k != "source"} != {k: v for k, v in self.header.items()
                                                                    if k != "source"}:
                raise PseudoDataError(f"{self.out}: resume=True but the interrupted writer there had another header "
                                      f"({old}); use a new folder or overwrite=True without resume.")
            reuse = all(os.path.isfile(os.path.join(self.out, f)) and
                        os.path.getsize(os.path.join(self.out, f)) == int(np.prod(s)) * d.itemsize
                        for f, (s, d) in shapes.items())
        _atomic_json(partial_path, self.header)
        mode = "r+" if reuse else "w+"
        self._rgb = np.memmap(os.path.join(self.out, RGB_FILE), dtype=RGB_DTYPE, mode=mode,
                              shape=shapes[RGB_FILE][0])
        self._c2w = np.memmap(os.path.join(self.out, C2W_FILE), dtype=C2W_DTYPE, mode=mode,
                              shape=shapes[C2W_FILE][0])
        self._written = np.memmap(os.path.join(self.out, WRITTEN_FILE), dtype=np.uint8, mode=mode,
                                  shape=shapes[WRITTEN_FILE][0])
        if os.path.isfile(os.path.join(self.out, HOLDOUT_FILE)) and not reuse:
            os.remove(os.path.join(self.out, HOLDOUT_FILE))

    def _shapes(self) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
        h = self.header
        return {RGB_FILE: ((h["n"], h["height"], h["width"], 3), RGB_DTYPE), C2W_FILE: ((h["n"], 4, 4), C2W_DTYPE),
                WRITTEN_FILE: ((h["n"],), np.dtype(np.uint8))}

    @property
    def n(self) -> int:
        return int(self.header["n"])

    def missing(self) -> List[int]:
        """Indices not written yet (after ``resume=True``: the views still to render)."""
        return np.flatnonzero(self._written == 0).tolist()

    def write(self, i: int, rgb: Any, c2w: Any) -> None:
        """View ``i``: ``rgb`` [H, W, 3] in [0, 1] (tensor or array, any float dtype; clamped), ``c2w`` [4, 4] or
        [3, 4] (OpenGL camera-to-world, rigid)."""
        if self.closed:
            raise RuntimeError(f"PseudoDataWriter({self.out}) is closed.")
        h = self.header
        i = int(i)
        if not 0 <= i < h["n"]:
            raise IndexError(f"view index {i} is outside [0, {h['n']}) for {self.out}.")
        img = rgb.detach().float().cpu().numpy() if torch.is_tensor(rgb) else np.asarray(rgb, dtype=np.float32)
        if img.shape != (h["height"], h["width"], 3):
            raise ValueError(f"view {i}: rgb must be [{h['height']}, {h['width']}, 3], got {list(img.shape)}.")
        if not np.isfinite(img).all():
            raise ValueError(f"view {i}: rgb has non-finite values.")
        m = c2w.detach().double().cpu().numpy() if torch.is_tensor(c2w) else np.asarray(c2w, dtype=np.float64)
        if m.shape == (3, 4):
            m = np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]], 0)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise ValueError(f"view {i}: c2w must be a finite [4, 4] (or [3, 4]) matrix, got shape {list(m.shape)}.")
        self._rgb[i] = np.clip(img, 0.0, 1.0).astype(RGB_DTYPE)
        self._c2w[i] = m.astype(C2W_DTYPE)
        self._written[i] = 1

    def close(self, holdout: Optional[Sequence[int]] = None) -> str:
        """Flush the files, write ``holdout.json`` (if any) and then ``pseudo.json`` with ``complete: true``;
        refuses (and keeps the folder incomplete) when views are missing. Returns the folder."""
        if self.closed:
            return self.out
        miss = self.missing()
        if miss:
            raise PseudoDataError(f"{self.out}: {len(miss)} of {self.n} views were never written (first: "
                                  f"{miss[:5]}); write them (resume=True continues) before close().")
        holdout = self.holdout if holdout is None else list(holdout)
        for arr in (self._rgb, self._c2w):
            arr.flush()
        if holdout is not None:
            held = sorted({int(i) for i in holdout})
            if any(not 0 <= i < self.n for i in held):
                raise PseudoDataError(f"{self.out}: holdout indices must be in [0, {self.n}), got {held[:8]}...")
            _atomic_json(os.path.join(self.out, HOLDOUT_FILE), held)
        self._rgb = self._c2w = self._written = None  # type: ignore[assignment]
        for f in (WRITTEN_FILE, PARTIAL):
            path = os.path.join(self.out, f)
            if os.path.isfile(path):
                os.remove(path)
        _atomic_json(os.path.join(self.out, HEADER), {**self.header, "complete": True})
        self.closed = True
        return self.out

    def __enter__(self) -> "PseudoDataWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()


# ------------------------------------------------------------------------------------------------------ reader
def _as_index(idx: Index) -> Tuple[np.ndarray, bool]:
    if torch.is_tensor(idx):
        idx = idx.detach().cpu().numpy()
    arr = np.asarray(idx, dtype=np.int64)
    return arr.reshape(-1), arr.ndim == 0


class PseudoData:
    """Memory-mapped reader of a pseudo-data folder (see the module docstring).

    ``indices``: this rank's training views (``train_indices[rank::world_size]``: the ranks' shards are disjoint
    and together cover every training view); ``holdout``: the views in ``holdout.json`` (empty without one)."""

    def __init__(self, folder: str, rank: int = 0, world_size: int = 1) -> None:
        self.folder = os.path.abspath(folder)
        f = self.folder
        if not os.path.isdir(f):
            raise PseudoDataError(f"pseudo data folder {f} does not exist (render one from a trained teacher with "
                                  f"custom/mobilegen3d/scripts/make_pseudo_data.py).")
        header_path = os.path.join(f, HEADER)
        if not os.path.isfile(header_path):
            if os.path.isfile(os.path.join(f, PARTIAL)):
                raise PseudoDataError(f"pseudo data folder {f} is incomplete: its writer never finished (there is "
                                      f"{PARTIAL} but no {HEADER}); finish the render (resume=True) first.")
            raise PseudoDataError(f"{f} is not a pseudo data folder: it has no {HEADER}.")
        try:
            with open(header_path, "r", encoding="utf-8") as fh:
                h = json.load(fh)
        except (OSError, ValueError) as e:
            raise PseudoDataError(f"{header_path}: cannot read it as JSON ({e}).") from e
        if not isinstance(h, dict) or h.get("complete") is not True:
            raise PseudoDataError(f"{header_path}: the dataset is not marked complete (\"complete\": true).")
        if h.get("version") != VERSION:
            raise PseudoDataError(f"{header_path}: version {h.get('version')!r} is not supported (this reader reads "
                                  f"version {VERSION}).")
        self.header = check_header(h, header_path)
        n, H, W = h["n"], h["height"], h["width"]
        for name, shape, dt in ((RGB_FILE, (n, H, W, 3), RGB_DTYPE), (C2W_FILE, (n, 4, 4), C2W_DTYPE)):
            path = os.path.join(f, name)
            want = int(np.prod(shape)) * dt.itemsize
            if not os.path.isfile(path):
                raise PseudoDataError(f"pseudo data folder {f}: {name} is missing.")
            if os.path.getsize(path) != want:
                raise PseudoDataError(f"pseudo data folder {f}: {name} has {os.path.getsize(path)} bytes, but "
                                      f"{HEADER} describes {list(shape)} {dt.name} = {want} bytes.")
        self._rgb = np.memmap(os.path.join(f, RGB_FILE), dtype=RGB_DTYPE, mode="r", shape=(n, H, W, 3))
        self._c2w = np.memmap(os.path.join(f, C2W_FILE), dtype=C2W_DTYPE, mode="r", shape=(n, 4, 4))
        self.holdout: List[int] = []
        hold_path = os.path.join(f, HOLDOUT_FILE)
        if os.path.isfile(hold_path):
            try:
                with open(hold_path, "r", encoding="utf-8") as fh:
                    held = json.load(fh)
                self.holdout = sorted({int(i) for i in held})
            except (OSError, ValueError, TypeError) as e:
                raise PseudoDataError(f"{hold_path}: must be a JSON list of view indices ({e}).") from e
            if any(not 0 <= i < n for i in self.holdout):
                raise PseudoDataError(f"{hold_path}: indices must be in [0, {n}).")
        held = set(self.holdout)
        self.train_indices: List[int] = [i for i in range(n) if i not in held]
        if not self.train_indices:
            raise PseudoDataError(f"{hold_path}: every view is held out; nothing is left to train on.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} / world_size {world_size} is not a valid shard.")
        self.rank, self.world_size = int(rank), int(world_size)
        self.indices: List[int] = self.train_indices[self.rank::self.world_size]
        if not self.indices:
            raise PseudoDataError(f"pseudo data folder {f}: rank {rank} of {world_size} gets no training view "
                                  f"({len(self.train_indices)} views for {world_size} ranks).")
        self._dirs: Dict[str, torch.Tensor] = {}

    # ---- header
    def __len__(self) -> int:
        return int(self.header["n"])

    @property
    def height(self) -> int:
        return int(self.header["height"])

    @property
    def width(self) -> int:
        return int(self.header["width"])

    @property
    def lr_height(self) -> int:
        return int(self.header["lr_height"])

    @property
    def lr_width(self) -> int:
        return int(self.header["lr_width"])

    @property
    def scale(self) -> int:
        """The upsampling factor s = H / h."""
        return self.height // self.lr_height

    @property
    def intrinsics(self) -> List[float]:
        """[fx, fy, cx, cy] of the H x W renders."""
        return [float(x) for x in self.header["intrinsics"]]

    @property
    def lr_intrinsics(self) -> List[float]:
        """[fx, fy, cx, cy] of the h x w grid (divided by s: pixel centres stay at +0.5)."""
        return [x / self.scale for x in self.intrinsics]

    @property
    def near(self) -> float:
        return float(self.header["near"])

    @property
    def far(self) -> float:
        return float(self.header["far"])

    @property
    def source(self) -> str:
        return str(self.header.get("source", ""))

    # ---- views
    def rgb(self, idx: Index, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The teacher's render(s): [H, W, 3] for one index, [B, H, W, 3] for a list/array/tensor of them."""
        arr, single = _as_index(idx)
        out = torch.from_numpy(np.ascontiguousarray(self._rgb[arr])).to(dtype)
        return out[0] if single else out

    def c2w(self, idx: Index) -> torch.Tensor:
        """Camera-to-world [4, 4] (or [B, 4, 4]), float32."""
        arr, single = _as_index(idx)
        out = torch.from_numpy(np.ascontiguousarray(self._c2w[arr]))
        return out[0] if single else out

    def lr_directions(self, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """Camera-space directions [h, w, 3] (z = -1) of the low-resolution grid's pixel centres."""
        key = str(device)
        if key not in self._dirs:
            fx, fy, cx, cy = self.lr_intrinsics
            self._dirs[key] = get_ray_directions(self.lr_height, self.lr_width, (fx, fy), (cx, cy), device=device)
        return self._dirs[key]

    def low_res_rays(self, c2w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """rays_o, rays_d (unit) [h, w, 3] for c2w [4, 4] (or [B, h, w, 3] for [B, 4, 4]), on c2w's device."""
        dirs = self.lr_directions(c2w.device).to(c2w.dtype)
        return get_rays(dirs, c2w, normalize=True)

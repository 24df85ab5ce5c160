"""``capture``: photos or a video -> COLMAP structure from motion (pycolmap) -> a nerfstudio ``transforms.json``.

The library behind ``scripts/process_capture.py``. ``pycolmap`` (``pip install pycolmap``) is optional and imported
only inside :func:`run_sfm`; ``import threestudio`` never imports it. Everything else needs numpy, PIL, imageio
(with imageio-ffmpeg for videos) and rich.

Output folder (``OUT``), as nerfstudio's ``ns-process-data`` writes it::

    OUT/images/<name>            the images the SfM ran on (copies of the photos, or frames of the video), possibly
                                 downscaled so that the longer side is at most ``max_image_size``
    OUT/images_2, images_4, ...  optional further downscaled copies (``num_downscales``)
    OUT/colmap/database.db       COLMAP's feature/match database
    OUT/colmap/sparse/0          the largest reconstruction (COLMAP binary); sparse/1, ... any smaller ones
    OUT/colmap/colmap.log        COLMAP's own log
    OUT/colmap/summary.json      counts, errors and time per stage of the run
    OUT/transforms.json          cameras and poses (written atomically: a temp file, then os.replace)
    OUT/sparse_pc.ply            the sparse points3D (float x y z, uchar red green blue) in the transforms' world

Nothing is ever written into the input folder: ``OUT`` may not be the input folder or lie inside it
(:func:`check_output_dir`).

``transforms.json`` conventions (nerfstudio's, see :func:`reconstruction_to_transforms`): ``camera_model``
``"OPENCV"`` (``fl_x, fl_y, cx, cy, w, h, k1, k2, p1, p2``; COLMAP's SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL and RADIAL
cameras map onto it with the missing coefficients 0) or ``"OPENCV_FISHEYE"`` (``k1..k4``). Each frame's
``transform_matrix`` is camera-to-world with OpenGL camera axes (x right, y up, looking along -z); its world is
COLMAP's world rotated by ``applied_transform`` = ``[[1,0,0,0],[0,0,1,0],[0,-1,0,0]]`` (COLMAP's y-down world ->
z-up), which is also stored in the file. Frames are sorted by file name and carry ``colmap_im_id``. With several
cameras (``single_camera=False``) the intrinsics are written per frame instead of at the top.

Evaluation helpers: :func:`align_similarity` (Umeyama) and :func:`pose_errors` / :func:`compare_transforms` (rotation
and position errors of estimated camera poses against reference ones, after a similarity alignment of the camera
centres, so the comparison does not depend on either world frame or scale).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
CAMERA_MODELS = ("OPENCV", "OPENCV_FISHEYE")
MATCHERS = ("exhaustive", "sequential")
#: COLMAP world (y down, z forward for a typical first camera) -> nerfstudio world (z up); 3x4, as nerfstudio stores it
APPLIED_TRANSFORM = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
#: the outputs :func:`process_capture` owns inside OUT (``--overwrite`` removes these and nothing else)
MANAGED_OUTPUTS = ("images", "images_2", "images_4", "images_8", "colmap", "transforms.json", "sparse_pc.ply")
PYCOLMAP_INSTALL = "pip install pycolmap"


class CaptureError(RuntimeError):
    """Processing a capture failed; the message says why and what to try."""


class CaptureInputError(CaptureError, ValueError):
    """Bad input: a missing or unusable input path, an output folder that would touch the input, bad options."""


class ReconstructionError(CaptureError):
    """Structure from motion did not produce a usable reconstruction. ``reconstruction`` holds the largest model (or
    None) and ``num_registered`` / ``num_images`` the counts."""

    def __init__(self, message: str, reconstruction: Any = None, num_registered: int = 0, num_images: int = 0):
        super().__init__(message)
        self.reconstruction = reconstruction
        self.num_registered = num_registered
        self.num_images = num_images


# ------------------------------------------------------------------------------------------------ small helpers
def _progress(console: Any = None, transient: bool = False) -> Any:
    """A rich progress display (on stderr unless ``console`` says otherwise) with a spinner, bar, count and time."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn)

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console or Console(stderr=True), transient=transient)


@contextlib.contextmanager
def _stage(progress: bool, console: Any, description: str, total: Optional[int]) -> Iterator[Tuple[Any, Any]]:
    """A progress display with one task for one stage; yields (display, task id)."""
    prog = _progress(console) if progress else _NullProgress()
    with prog:
        yield prog, prog.add_task(description, total=total)


class _NullProgress:
    """Stands in for a rich Progress when progress=False."""

    def __enter__(self) -> "_NullProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def update(self, *a: Any, **k: Any) -> None:
        return None

    def advance(self, *a: Any, **k: Any) -> None:
        return None


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and ``os.replace`` (never half-written)."""
    _atomic_write(path, text.encode("utf-8"))


def _atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "xb") as f:  # (not mkstemp: its 0600 mode would stick to the result; this honours umask)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def list_images(folder: str) -> List[str]:
    """File names (not paths) of the images directly inside ``folder`` (extensions in :data:`IMAGE_EXTENSIONS`,
    any case), sorted. Sub-folders are not searched."""
    if not os.path.isdir(folder):
        raise CaptureInputError(f"{folder} is not a folder.")
    return sorted(n for n in os.listdir(folder)
                  if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))
                  and not n.startswith("."))


def is_video(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(VIDEO_EXTENSIONS)


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(os.path.abspath(os.fspath(path))))


def _is_within(path: str, folder: str) -> bool:
    """True if ``path`` is ``folder`` or lies inside it (after resolving symlinks)."""
    path, folder = _real(path), _real(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_dir(input_path: str, out_dir: str) -> None:
    """Refuse output folders that would write into the input.

    For a folder of photos, ``out_dir`` may not be that folder nor lie inside it; and the input may not be one of
    the folders this tool writes inside ``out_dir`` (``OUT/images``, ``OUT/colmap``, ...), which ``--overwrite``
    would delete. For a video, ``out_dir`` may not be the video file itself. Raises :class:`CaptureInputError`.
    """
    input_path, out_dir = os.fspath(input_path), os.fspath(out_dir)
    if os.path.isdir(input_path):
        if _real(out_dir) == _real(input_path):
            raise CaptureInputError(f"the output folder is the input folder ({input_path}); choose another output "
                                    f"folder (nothing is ever written into the input folder).")
        if _is_within(out_dir, input_path):
            raise CaptureInputError(f"the output folder {out_dir} lies inside the input folder {input_path}; choose "
                                    f"an output folder outside it (nothing is ever written into the input folder).")
        for name in MANAGED_OUTPUTS:
            if _is_within(input_path, os.path.join(out_dir, name)):
                raise CaptureInputError(f"the input folder {input_path} is {os.path.join(out_dir, name)}, which this "
                                        f"tool writes (and --overwrite deletes); copy the photos elsewhere first.")
    elif _real(out_dir) == _real(input_path):
        raise CaptureInputError(f"the output folder is the input file ({input_path}); choose a folder.")


def _resized_size(w: int, h: int, max_size: Optional[int]) -> Tuple[int, int]:
    if not max_size or max_size <= 0 or max(w, h) <= max_size:
        return w, h
    s = max_size / max(w, h)
    return max(1, int(round(w * s))), max(1, int(round(h * s)))


def _save_image(im: Any, path: str, exif: Any = None, icc: Optional[bytes] = None, quality: int = 95) -> None:
    ext = os.path.splitext(path)[1].lower()
    kw: Dict[str, Any] = {}
    if icc:
        kw["icc_profile"] = icc
    if ext in (".jpg", ".jpeg"):
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        kw.update(quality=quality)
        if exif is not None:
            kw["exif"] = exif
    elif im.mode not in ("RGB", "RGBA", "L", "LA", "I;16", "I"):
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    im.save(path, **kw)


def _copy_one(src: str, dst: str, max_size: Optional[int], quality: int = 95) -> Tuple[int, int]:
    """Copy an image, or write a downscaled (and/or EXIF-rotated) copy. Returns the written (width, height).

    The bytes are copied unchanged when no resize is needed and the EXIF orientation is normal; otherwise the pixels
    are rotated upright (so COLMAP and the training loader, which both ignore EXIF orientation, see the same image),
    resized with Lanczos and saved in the same format (JPEG quality ``quality``), keeping EXIF and ICC data."""
    from PIL import Image, ImageOps

    with Image.open(src) as im:
        orientation = im.getexif().get(0x0112, 1)
        w, h = im.size
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        new = _resized_size(w, h, max_size)
        if new == (w, h) and orientation in (1, None):
            shutil.copyfile(src, dst)
            return w, h
        icc = im.info.get("icc_profile")
        up = ImageOps.exif_transpose(im)  # a copy, with the orientation tag removed from its EXIF
        exif = up.getexif()
        if 0x0112 in exif:
            del exif[0x0112]
        if new != up.size:
            if up.mode not in ("RGB", "RGBA", "L", "LA"):
                up = up.convert("RGBA" if "A" in up.getbands() else "RGB")
            up = up.resize(new, Image.Resampling.LANCZOS, reducing_gap=3.0)
        _save_image(up, dst, exif=exif.tobytes() if len(exif) else None, icc=icc, quality=quality)
        return up.size


def copy_images(src_dir: str, dst_dir: str, max_size: Optional[int] = None, names: Optional[Sequence[str]] = None,
                progress: bool = True, console: Any = None) -> List[str]:
    """Copy the images of ``src_dir`` (or the given ``names``) into ``dst_dir`` under the same names, downscaling
    those larger than ``max_size`` on their longer side. Returns the written names. ``src_dir`` is only read."""
    names = list(names) if names is not None else list_images(src_dir)
    if not names:
        raise CaptureInputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {src_dir}.")
    os.makedirs(dst_dir, exist_ok=True)
    prog = _progress(console) if progress else _NullProgress()
    with prog:
        task = prog.add_task("copying images" + (f" (max {max_size} px)" if max_size else ""), total=len(names))
        for n in names:
            _copy_one(os.path.join(src_dir, n), os.path.join(dst_dir, n), max_size)
            prog.advance(task)
    return names


def write_downscaled(image_dir: str, out_dir: str, num_downscales: int, progress: bool = True,
                     console: Any = None) -> List[str]:
    """nerfstudio's ``images_2``, ``images_4``, ... next to ``image_dir``: each image divided by 2, 4, ... in width
    and height (rounded, at least 1 pixel; Lanczos), same names and formats. Returns the folders written."""
    from PIL import Image

    names = list_images(image_dir)
    folders = []
    if num_downscales <= 0:
        return folders
    prog = _progress(console) if progress else _NullProgress()
    with prog:
        task = prog.add_task(f"downscaled copies x{num_downscales}", total=len(names) * num_downscales)
        for k in range(1, num_downscales + 1):
            f = 2 ** k
            folder = os.path.join(out_dir, f"images_{f}")
            os.makedirs(folder, exist_ok=True)
            folders.append(folder)
            for n in names:
                with Image.open(os.path.join(image_dir, n)) as im:
                    im.load()
                    icc = im.info.get("icc_profile")
                    exif = im.info.get("exif")
                    w, h = im.size
                    src = im if im.mode in ("RGB", "RGBA", "L", "LA") else im.convert(
                        "RGBA" if "A" in im.getbands() else "RGB")
                    small = src.resize((max(1, round(w / f)), max(1, round(h / f))), Image.Resampling.LANCZOS)
                    _save_image(small, os.path.join(folder, n), exif=exif, icc=icc)
                prog.advance(task)
    return folders


# ------------------------------------------------------------------------------------------------ video frames
def sample_video_frames(video_path: str, out_dir: str, fps: Optional[float] = 2.0, num_frames: Optional[int] = None,
                        max_size: Optional[int] = None, progress: bool = True, quality: int = 95,
                        name_format: str = "frame_{:05d}.jpg", console: Any = None) -> List[str]:
    """Write frames of a video as JPEGs into ``out_dir`` (``frame_00001.jpg``, ... numbered in output order).

    Frames are read with imageio's ffmpeg reader and written with PIL. ``num_frames`` (if given) wins: that many
    frames evenly spread over the whole video (first and last included; fewer if the video is shorter). Otherwise
    ``fps`` frames per second of video: the first frame of every ``1/fps`` interval (every frame if ``fps`` is at
    least the video's rate). ``max_size`` downscales frames whose longer side is larger (Lanczos).
    Returns the written paths, in order.
    """
    import imageio.v2 as iio
    from PIL import Image

    if not os.path.isfile(video_path):
        raise CaptureInputError(f"video {video_path} does not exist.")
    if num_frames is not None and num_frames < 1:
        raise CaptureInputError(f"num_frames must be >= 1, got {num_frames}.")
    if num_frames is None and (fps is None or not fps > 0):
        raise CaptureInputError(f"fps must be > 0, got {fps}.")
    try:
        reader = iio.get_reader(video_path, "ffmpeg")
    except Exception as e:
        raise CaptureInputError(f"cannot read the video {video_path}: {e}") from e
    written: List[str] = []
    try:
        meta = reader.get_meta_data()
        src_fps = float(meta.get("fps") or 0.0)
        total = meta.get("nframes")
        if not isinstance(total, (int, float)) or not math.isfinite(total) or total <= 0:
            duration = meta.get("duration")  # an estimate for the progress bar (the stream is read to its end)
            total = int(round(float(duration) * src_fps)) if duration and src_fps > 0 else None
        if num_frames is not None:
            try:
                total = int(reader.count_frames())  # exact (decodes the stream once); the metadata can be off
            except Exception:
                pass
            if total is None:
                raise CaptureError(f"cannot count the frames of {video_path}; use fps sampling instead.")
            wanted = set(np.unique(np.round(np.linspace(0, total - 1, num_frames)).astype(int)).tolist())
            select: Callable[[int], bool] = lambda i: i in wanted  # noqa: E731
            expected = len(wanted)
        else:
            if src_fps <= 0:
                raise CaptureError(f"{video_path} states no frame rate; use num_frames instead of fps.")
            ratio = float(fps) / src_fps
            # frame i is taken when it is the first one in its 1/fps interval of video time
            select = lambda i: i == 0 or math.floor(i * ratio + 1e-9) > math.floor((i - 1) * ratio + 1e-9)  # noqa
            expected = int(math.floor((int(total) - 1) * ratio + 1e-9)) + 1 if total else None
        os.makedirs(out_dir, exist_ok=True)
        prog = _progress(console) if progress else _NullProgress()
        with prog:
            task = prog.add_task(f"reading {os.path.basename(video_path)}", total=total)
            for i, frame in enumerate(reader):
                if select(i):
                    im = Image.fromarray(np.asarray(frame)[..., :3])
                    size = _resized_size(im.width, im.height, max_size)
                    if size != im.size:
                        im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
                    path = os.path.join(out_dir, name_format.format(len(written) + 1))
                    im.save(path, quality=quality)
                    written.append(path)
                prog.update(task, advance=1, description=f"reading {os.path.basename(video_path)}: "
                                                         f"{len(written)}" + (f"/{expected}" if expected else "")
                                                         + " frames kept")
    finally:
        reader.close()
    if not written:
        raise CaptureError(f"no frames could be read from {video_path}.")
    return written


# ------------------------------------------------------------------------------------------------ structure from motion
def _require_pycolmap() -> Any:
    from threestudio.utils.imports import require

    return require("pycolmap", "Structure from motion (threestudio.data.capture.run_sfm)", PYCOLMAP_INSTALL)


@contextlib.contextmanager
def _colmap_log_to(path: str, pycolmap: Any) -> Iterator[None]:
    """Send COLMAP's glog output to ``path`` (only fatal errors still reach stderr) for the duration of the block."""
    lg = pycolmap.logging
    saved = {k: getattr(lg, k) for k in ("alsologtostderr", "logtostderr", "stderrthreshold", "minloglevel")}
    base = path + ".glog."
    try:
        lg.alsologtostderr, lg.logtostderr, lg.minloglevel = False, False, 0
        lg.stderrthreshold = 3  # FATAL only: errors are in the log, and our exceptions point to it
        lg.set_log_destination(lg.INFO, base)
        yield
    finally:
        lg.set_log_destination(lg.INFO, "")  # an empty base closes the file and stops file logging
        for k, v in saved.items():
            setattr(lg, k, v)
        # glog appends a time stamp to the base name: gather what it wrote into ``path``
        folder = os.path.dirname(base) or "."
        parts = sorted(n for n in os.listdir(folder) if os.path.join(folder, n).startswith(base))
        if parts:
            with open(path, "ab") as out:
                for n in parts:
                    with open(os.path.join(folder, n), "rb") as f:
                        shutil.copyfileobj(f, out)
                    os.remove(os.path.join(folder, n))


def _tail(path: str, n: int = 5) -> str:
    try:
        with open(path, "r", errors="replace") as f:
            lines = [ln.rstrip() for ln in f if ln.startswith(("E", "W", "F"))]
        return "\n".join(lines[-n:])
    except OSError:
        return ""


def _refine_intrinsics(pycolmap: Any, rec: Any) -> Any:
    """One global bundle adjustment of all registered images, points and intrinsics including the principal point
    (colmap's ``bundle_adjuster --BundleAdjustment.refine_principal_point 1``, as ns-process-data runs it), gauge
    fixed by three points. Built from the adjuster API because ``pycolmap.bundle_adjustment`` switches COLMAP's
    logging back to stderr. Returns the refined reconstruction, or the input one if the solver fails."""
    before = pycolmap.Reconstruction(rec)
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_principal_point = True
    options.print_summary = False
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.THREE_POINTS)
    summary = pycolmap.create_default_bundle_adjuster(options, config, rec).solve()
    if not summary.is_solution_usable():
        return before
    rec.update_point_3d_errors()
    return rec


def run_sfm(image_dir: str, work_dir: str, camera_model: str = "OPENCV", matcher: str = "exhaustive",
            max_image_size: int = 3200, single_camera: bool = True, progress: bool = True, *,
            image_names: Optional[Sequence[str]] = None, refine_intrinsics: bool = True,
            min_registered_fraction: float = 0.5, num_threads: int = -1, seed: int = 0,
            sequential_overlap: int = 10, timings: Optional[Dict[str, float]] = None, console: Any = None) -> Any:
    """COLMAP's sparse reconstruction of the images in ``image_dir`` with pycolmap; returns the largest model
    (a ``pycolmap.Reconstruction``).

    Writes ``work_dir/database.db`` (replaced if present), ``work_dir/sparse/0`` (the largest model; smaller ones as
    ``sparse/1``, ...) and ``work_dir/colmap.log``. ``image_dir`` is only read.

    Args:
        camera_model: COLMAP camera model, ``"OPENCV"`` or ``"OPENCV_FISHEYE"`` (any COLMAP model name is accepted;
            :func:`reconstruction_to_transforms` converts SIMPLE_PINHOLE/PINHOLE/SIMPLE_RADIAL/RADIAL too).
        matcher: ``"exhaustive"`` (all pairs; photos, up to a few hundred) or ``"sequential"`` (each image with its
            ``sequential_overlap`` successors in file-name order plus quadratic jumps; video frames).
        max_image_size: SIFT runs on images downscaled to this longer side (keypoints are in full-resolution pixels).
        single_camera: one shared camera (nerfstudio's default) or one per image.
        refine_intrinsics: after mapping, one more bundle adjustment that also refines the principal point
            (what ns-process-data does).
        min_registered_fraction: raise :class:`ReconstructionError` if the largest model registers fewer than this
            fraction of the images (always if fewer than 2).
        timings: if given, filled with seconds per stage (``features``, ``matching``, ``mapping``, ``refine``).
        progress: rich progress bars on stderr (a bar for feature extraction and for registration, a spinner with
            elapsed time for matching).
    """
    if matcher not in MATCHERS:
        raise CaptureInputError(f"matcher must be one of {', '.join(MATCHERS)}, got {matcher!r}.")
    names = list(image_names) if image_names is not None else list_images(image_dir)
    if not names:
        raise CaptureInputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}.")
    if len(names) < 2:
        raise CaptureInputError(f"structure from motion needs at least 2 images; {image_dir} has {len(names)}.")
    pycolmap = _require_pycolmap()
    if not hasattr(pycolmap.CameraModelId, camera_model):
        raise CaptureInputError(f"unknown COLMAP camera model {camera_model!r} (use OPENCV or OPENCV_FISHEYE).")
    timings = timings if timings is not None else {}
    os.makedirs(work_dir, exist_ok=True)
    db_path = os.path.join(work_dir, "database.db")
    sparse_dir = os.path.join(work_dir, "sparse")
    log_path = os.path.join(work_dir, "colmap.log")
    for p in (db_path, log_path):
        if os.path.exists(p):
            os.remove(p)
    if os.path.isdir(sparse_dir):
        shutil.rmtree(sparse_dir)
    os.makedirs(sparse_dir)
    pycolmap.set_random_seed(seed)

    camera_mode = pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = int(max_image_size)
    extraction.num_threads = num_threads
    n = len(names)

    def stage(description: str, total: Optional[int]) -> Any:  # one display per stage: piped logs get a line each
        return _stage(progress, console, description, total)

    with _colmap_log_to(log_path, pycolmap):
        # --- features: images are imported once (one shared camera), then extracted in small batches so the bar moves
        t0 = time.perf_counter()
        with stage("feature extraction (SIFT)", n) as (prog, task):
            pycolmap.Database.open(db_path).close()
            pycolmap.import_images(db_path, image_dir, camera_mode, image_names=names, options=reader)
            batch = max(2, 2 * (os.cpu_count() or 1) if num_threads <= 0 else 2 * num_threads)
            for i in range(0, n, batch):
                pycolmap.extract_features(db_path, image_dir, image_names=names[i:i + batch],
                                          camera_mode=camera_mode, reader_options=reader,
                                          extraction_options=extraction)
                prog.update(task, completed=min(n, i + batch))
        db = pycolmap.Database.open(db_path)
        try:
            in_db = {im.name: im.image_id for im in db.read_all_images()}
            no_features = [nm for nm in names if nm not in in_db or db.num_keypoints_for_image(in_db[nm]) == 0]
        finally:
            db.close()
        timings["features"] = time.perf_counter() - t0
        if len(no_features) == n:
            raise ReconstructionError(f"no features could be extracted from any of the {n} images in {image_dir} "
                                      f"(unreadable images?). See {log_path}.", None, 0, n)

        # --- matching (C++ that reports nothing on the way: a spinner with the elapsed time)
        t0 = time.perf_counter()
        pairs = n * (n - 1) // 2 if matcher == "exhaustive" else None
        with stage(f"{matcher} matching" + (f" ({pairs} pairs)" if pairs else ""), None) as (prog, task):
            matching = pycolmap.FeatureMatchingOptions()
            matching.num_threads = num_threads
            if matcher == "exhaustive":
                pycolmap.match_exhaustive(db_path, matching_options=matching)
            else:
                pairing = pycolmap.SequentialPairingOptions()
                pairing.overlap = int(sequential_overlap)
                pairing.quadratic_overlap = True
                pycolmap.match_sequential(db_path, matching_options=matching, pairing_options=pairing)
            prog.update(task, total=1, completed=1)
        timings["matching"] = time.perf_counter() - t0

        # --- incremental mapping; the callbacks tell how many images are registered
        t0 = time.perf_counter()
        with stage("incremental mapping: registered", n) as (prog, task):
            count = [0]

            def _on_pair() -> None:
                count[0] += 2
                prog.update(task, completed=min(n, count[0]))

            def _on_image() -> None:
                count[0] += 1
                prog.update(task, completed=min(n, count[0]))

            options = pycolmap.IncrementalPipelineOptions()
            options.num_threads = num_threads
            options.random_seed = seed
            options.mapper.random_seed = seed
            options.triangulation.random_seed = seed
            if n < options.min_model_size:
                options.min_model_size = max(2, n // 2)
            models = pycolmap.incremental_mapping(db_path, image_dir, sparse_dir, options=options,
                                                  initial_image_pair_callback=_on_pair,
                                                  next_image_callback=_on_image)
            models = sorted(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()), reverse=True)
            prog.update(task, completed=models[0].num_reg_images() if models else 0)
        timings["mapping"] = time.perf_counter() - t0

        if refine_intrinsics and models:
            t0 = time.perf_counter()
            with stage("bundle adjustment (intrinsics incl. principal point)", None) as (prog, task):
                models[0] = _refine_intrinsics(pycolmap, models[0])
                prog.update(task, total=1, completed=1)
            timings["refine"] = time.perf_counter() - t0
    hint = "--matcher exhaustive, " if matcher == "sequential" else ""
    if not models:  # (after the block above: COLMAP's log is complete now)
        tail = _tail(log_path)
        raise ReconstructionError(
            f"structure from motion registered 0 of {n} images: no image pair could start a model (too little "
            f"overlap, texture or parallax?). Try {hint}more photos with more overlap, or a larger max image "
            f"size. COLMAP's log: {log_path}" + (f"; its last warnings:\n{tail}" if tail else ""),
            None, 0, n)
    rec = models[0]
    shutil.rmtree(sparse_dir)
    for i, r in enumerate(models):
        os.makedirs(os.path.join(sparse_dir, str(i)))
        r.write(os.path.join(sparse_dir, str(i)))
    k = rec.num_reg_images()
    if k < 2 or k < min_registered_fraction * n:
        others = f" (other models: {', '.join(str(r.num_reg_images()) for r in models[1:])} images)" \
            if len(models) > 1 else ""
        raise ReconstructionError(
            f"structure from motion registered only {k} of {n} images ({100.0 * k / n:.0f}%) in its largest "
            f"model{others}; at least {'2' if k < 2 else f'{100 * min_registered_fraction:.0f}%'} are needed. "
            f"Try {hint}photos with more overlap, or a larger max image size. The models are in "
            f"{sparse_dir}; COLMAP's log: {log_path}", rec, k, n)
    return rec


def registered_image_names(rec: Any) -> List[str]:
    return sorted(rec.images[i].name for i in rec.reg_image_ids())


# ------------------------------------------------------------------------------------------------ transforms.json
def colmap_camera_to_dict(camera: Any) -> Dict[str, Any]:
    """nerfstudio's intrinsics fields for a pycolmap camera: ``camera_model`` (OPENCV or OPENCV_FISHEYE), ``w``,
    ``h``, ``fl_x``, ``fl_y``, ``cx``, ``cy`` and ``k1, k2, p1, p2`` (OPENCV) or ``k1..k4`` (OPENCV_FISHEYE)."""
    model = camera.model_name if hasattr(camera, "model_name") else str(camera.model).split(".")[-1]
    p = [float(v) for v in np.asarray(camera.params).ravel()]
    out: Dict[str, Any] = {"w": int(camera.width), "h": int(camera.height)}
    if model == "SIMPLE_PINHOLE":  # f, cx, cy
        k, fisheye = dict(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2]), False
    elif model == "PINHOLE":  # fx, fy, cx, cy
        k, fisheye = dict(fl_x=p[0], fl_y=p[1], cx=p[2], cy=p[3]), False
    elif model == "SIMPLE_RADIAL":  # f, cx, cy, k
        k, fisheye = dict(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2], k1=p[3]), False
    elif model == "RADIAL":  # f, cx, cy, k1, k2
        k, fisheye = dict(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2], k1=p[3], k2=p[4]), False
    elif model == "OPENCV":  # fx, fy, cx, cy, k1, k2, p1, p2
        k, fisheye = dict(fl_x=p[0], fl_y=p[1], cx=p[2], cy=p[3], k1=p[4], k2=p[5], p1=p[6], p2=p[7]), False
    elif model == "SIMPLE_RADIAL_FISHEYE":  # f, cx, cy, k
        k, fisheye = dict(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2], k1=p[3]), True
    elif model == "RADIAL_FISHEYE":  # f, cx, cy, k1, k2
        k, fisheye = dict(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2], k1=p[3], k2=p[4]), True
    elif model == "OPENCV_FISHEYE":  # fx, fy, cx, cy, k1, k2, k3, k4
        k, fisheye = dict(fl_x=p[0], fl_y=p[1], cx=p[2], cy=p[3], k1=p[4], k2=p[5], k3=p[6], k4=p[7]), True
    else:
        raise CaptureError(f"COLMAP camera model {model} cannot be written as nerfstudio's OPENCV/OPENCV_FISHEYE "
                           f"(use OPENCV or OPENCV_FISHEYE for the reconstruction).")
    keys = ("k1", "k2", "k3", "k4") if fisheye else ("k1", "k2", "p1", "p2")
    out["camera_model"] = "OPENCV_FISHEYE" if fisheye else "OPENCV"
    out.update({key: k[key] for key in ("fl_x", "fl_y", "cx", "cy")})
    out.update({key: float(k.get(key, 0.0)) for key in keys})
    return out


def colmap_pose_to_c2w(cam_from_world_3x4: np.ndarray, applied_transform: Optional[np.ndarray] = APPLIED_TRANSFORM
                       ) -> np.ndarray:
    """COLMAP's world-to-camera [R|t] (OpenCV camera axes) -> 4x4 camera-to-world with OpenGL camera axes (y and z
    flipped), in the world ``applied_transform @ x_colmap`` (3x4 or 4x4; None: COLMAP's world)."""
    w2c = np.eye(4)
    w2c[:3, :4] = np.asarray(cam_from_world_3x4, dtype=np.float64)[:3, :4]
    c2w = np.linalg.inv(w2c)
    c2w[:3, 1:3] *= -1.0  # OpenCV (x right, y down, z forward) -> OpenGL (x right, y up, z back)
    if applied_transform is not None:
        A = np.eye(4)
        A[:3, :] = np.asarray(applied_transform, dtype=np.float64)[:3, :]
        c2w = A @ c2w
    return c2w


def _applied(applied_transform: Any) -> Optional[np.ndarray]:
    if applied_transform is True:
        return APPLIED_TRANSFORM
    if applied_transform is False or applied_transform is None:
        return None
    return np.asarray(applied_transform, dtype=np.float64)[:3, :4]


def reconstruction_to_transforms(rec: Any, image_names_to_paths: Optional[Mapping[str, str]] = None, *,
                                 applied_transform: Any = True, ply_file_path: Optional[str] = "sparse_pc.ply"
                                 ) -> Dict[str, Any]:
    """A nerfstudio ``transforms.json`` dict for the registered images of a pycolmap Reconstruction.

    Args:
        image_names_to_paths: COLMAP image name -> ``file_path`` to write (relative to the JSON's folder); default
            ``images/<name>``. A registered image missing from a given mapping is an error.
        applied_transform: True (nerfstudio's z-up permutation :data:`APPLIED_TRANSFORM`, stored in the file), a
            3x4 matrix, or False/None (COLMAP's world, no ``applied_transform`` key).
        ply_file_path: stored as ``ply_file_path`` (None: left out); write the file with :func:`write_points_ply`.

    One camera: the intrinsics are top-level fields; several: ``camera_model`` at the top, the rest per frame.
    Frames are sorted by ``file_path``; each has ``file_path``, ``transform_matrix`` (4x4 camera-to-world, OpenGL
    camera axes, see :func:`colmap_pose_to_c2w`) and ``colmap_im_id``.
    """
    A = _applied(applied_transform)
    reg = list(rec.reg_image_ids())
    if not reg:
        raise CaptureError("the reconstruction has no registered images.")
    cams = {}
    for i in reg:
        cid = rec.images[i].camera_id
        if cid not in cams:
            cams[cid] = colmap_camera_to_dict(rec.cameras[cid])
    models = {c["camera_model"] for c in cams.values()}
    if len(models) > 1:
        raise CaptureError(f"the reconstruction mixes camera models {sorted(models)}; nerfstudio's transforms.json "
                           f"holds one camera_model.")
    out: Dict[str, Any] = {"camera_model": models.pop()}
    single = len(cams) == 1
    if single:
        out.update({k: v for k, v in next(iter(cams.values())).items() if k != "camera_model"})
    frames = []
    for i in reg:
        im = rec.images[i]
        if image_names_to_paths is None:
            path = f"images/{im.name}"
        elif im.name in image_names_to_paths:
            path = image_names_to_paths[im.name]
        else:
            raise CaptureError(f"registered image {im.name} has no entry in image_names_to_paths.")
        c2w = colmap_pose_to_c2w(im.cam_from_world().matrix(), A)
        frame: Dict[str, Any] = {"file_path": path, "transform_matrix": c2w.tolist(), "colmap_im_id": int(i)}
        if not single:
            frame.update({k: v for k, v in cams[im.camera_id].items() if k != "camera_model"})
        frames.append(frame)
    out["frames"] = sorted(frames, key=lambda f: f["file_path"])
    if A is not None:
        out["applied_transform"] = A.tolist()
    if ply_file_path:
        out["ply_file_path"] = ply_file_path
    return out


def write_points_ply(rec: Any, path: str, applied_transform: Any = True, binary: bool = False) -> int:
    """Write the points3D of ``rec`` as a PLY (``float x, y, z``, ``uchar red, green, blue``), transformed by
    ``applied_transform`` like the poses of :func:`reconstruction_to_transforms` (nerfstudio's ``sparse_pc.ply``).
    ASCII by default (as nerfstudio), binary little-endian with ``binary=True``; written atomically. Returns the
    number of points."""
    A = _applied(applied_transform)
    pts = list(rec.points3D.values())
    xyz = np.array([p.xyz for p in pts], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in pts], dtype=np.uint8).reshape(-1, 3)
    if A is not None:
        xyz = xyz @ A[:, :3].T + A[:, 3]
    n = len(pts)
    header = "\n".join(["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", f"element vertex {n}",
                        "property float x", "property float y", "property float z", "property uchar red",
                        "property uchar green", "property uchar blue", "end_header"]) + "\n"
    if binary:
        rec_arr = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                     ("red", "u1"), ("green", "u1"), ("blue", "u1")])
        for j, k in enumerate(("x", "y", "z")):
            rec_arr[k] = xyz[:, j]
        for j, k in enumerate(("red", "green", "blue")):
            rec_arr[k] = rgb[:, j]
        body = rec_arr.tobytes()
    else:
        body = "".join(f"{x:.8g} {y:.8g} {z:.8g} {r} {g} {b}\n"
                       for (x, y, z), (r, g, b) in zip(xyz.astype(np.float32).tolist(), rgb.tolist())).encode()
    _atomic_write(path, header.encode("ascii") + body)
    return n


# ------------------------------------------------------------------------------------------------ pose evaluation
def align_similarity(src_points: Any, dst_points: Any) -> Tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991): ``s, R, t`` minimising ``sum ||dst_i - (s R src_i + t)||^2`` with
    ``R`` a proper rotation (det +1) and ``s > 0``. Needs N >= 3 points not all on one line (else ValueError)."""
    src = np.asarray(src_points, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst_points, dtype=np.float64).reshape(-1, 3)
    if src.shape != dst.shape:
        raise ValueError(f"align_similarity: shapes differ, {src.shape} vs {dst.shape}.")
    if len(src) < 3:
        raise ValueError(f"align_similarity needs at least 3 point pairs, got {len(src)}.")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs ** 2).sum() / len(src)
    cov = xd.T @ xs / len(src)
    U, D, Vt = np.linalg.svd(cov)
    if var_s <= 1e-24 or D[1] <= 1e-12 * max(D[0], 1e-300):
        raise ValueError("align_similarity: the source points are (nearly) coincident or collinear; the rotation is "
                         "not determined.")
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / var_s)
    t = mu_d - s * R @ mu_s
    return s, R, t


def _as_poses(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 3 or a.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"pose_errors: {name} must be [N, 4, 4] or [N, 3, 4], got {a.shape}.")
    return a


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angle(s) in degrees of [..., 3, 3] rotation matrices (robust near 0 and 180 degrees)."""
    R = np.asarray(R, dtype=np.float64)
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    skew = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = np.linalg.norm(skew, axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))


def pose_errors(c2w_est: Any, c2w_ref: Any) -> Dict[str, Any]:
    """Errors of estimated camera-to-world poses against reference ones (same order, same camera axis convention,
    any world frames): the estimated camera centres are mapped onto the reference ones by the least-squares
    similarity :func:`align_similarity`, and the same similarity is applied to the estimated rotations.

    Returns a dict:
        ``rot_err_deg`` [N] angle of ``R_ref^T (R_align R_est)`` in degrees, with ``_median``/``_mean``/``_max``;
        ``pos_err`` [N] ``||s R_align c_est + t - c_ref||`` in reference units; ``pos_err_rel`` [N] the same divided
        by ``scene_size``, with ``_median``/``_mean``/``_max``;
        ``scene_size`` the largest distance of a reference camera centre from the centroid of the reference camera
        centres (the radius of the camera rig; about half the bounding-box diagonal, ``bbox_diagonal`` is given
        too); ``scale``, ``rotation``, ``translation`` the similarity (est -> ref); ``num_frames``;
        ``pair_rot_err_deg_median``/``_max``: the angle between estimated and reference relative rotations
        ``R_i^T R_j`` over all camera pairs, which needs no alignment (the centre-based alignment's rotation is poorly
        determined when the camera centres lie nearly on a line, which inflates ``rot_err_deg`` but not these).
    """
    est, ref = _as_poses(c2w_est, "c2w_est"), _as_poses(c2w_ref, "c2w_ref")
    if len(est) != len(ref):
        raise ValueError(f"pose_errors: {len(est)} estimated poses but {len(ref)} reference poses.")
    c_est, c_ref = est[:, :3, 3], ref[:, :3, 3]
    s, R, t = align_similarity(c_est, c_ref)
    c_al = s * c_est @ R.T + t
    R_al = R[None] @ est[:, :3, :3]
    rot = rotation_angle_deg(np.swapaxes(ref[:, :3, :3], 1, 2) @ R_al)
    pos = np.linalg.norm(c_al - c_ref, axis=1)
    size = float(np.linalg.norm(c_ref - c_ref.mean(0), axis=1).max())
    rel = pos / max(size, 1e-300)
    # alignment-free check: the relative rotation of every pair of cameras, estimated vs reference
    iu = np.triu_indices(len(est), 1)
    r_est = np.swapaxes(est[:, None, :3, :3], -1, -2) @ est[None, :, :3, :3]
    r_ref = np.swapaxes(ref[:, None, :3, :3], -1, -2) @ ref[None, :, :3, :3]
    pair = rotation_angle_deg(np.swapaxes(r_ref, -1, -2) @ r_est)[iu]
    return {
        "num_frames": int(len(est)),
        "rot_err_deg": rot.tolist(), "rot_err_deg_median": float(np.median(rot)),
        "rot_err_deg_mean": float(rot.mean()), "rot_err_deg_max": float(rot.max()),
        "pos_err": pos.tolist(), "pos_err_rel": rel.tolist(), "pos_err_rel_median": float(np.median(rel)),
        "pos_err_rel_mean": float(rel.mean()), "pos_err_rel_max": float(rel.max()),
        "scene_size": size, "scene_size_definition": "max distance of a reference camera centre from their centroid",
        "bbox_diagonal": float(np.linalg.norm(c_ref.max(0) - c_ref.min(0))),
        "scale": float(s), "rotation": R.tolist(), "translation": t.tolist(),
        "pair_rot_err_deg_median": float(np.median(pair)), "pair_rot_err_deg_max": float(pair.max()),
    }


def poses_by_name(transforms: Any) -> Dict[str, np.ndarray]:
    """File name (basename of ``file_path``) -> 4x4 ``transform_matrix`` of a transforms.json (dict or path)."""
    if isinstance(transforms, (str, os.PathLike)):
        with open(transforms) as f:
            transforms = json.load(f)
    out = {}
    for fr in transforms["frames"]:
        m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        if m.shape == (3, 4):
            m = np.vstack([m, [0, 0, 0, 1]])
        out[os.path.basename(fr["file_path"])] = m
    return out


def compare_transforms(est: Any, ref: Any) -> Dict[str, Any]:
    """:func:`pose_errors` of two transforms.json (dicts or paths) on the frames they share, matched by file name;
    adds ``names`` (the compared frames, sorted), ``missing_in_est`` and ``missing_in_ref``."""
    pe, pr = poses_by_name(est), poses_by_name(ref)
    names = sorted(set(pe) & set(pr))
    if len(names) < 3:
        raise ValueError(f"compare_transforms: only {len(names)} frames in common (need 3).")
    res = pose_errors(np.stack([pe[n] for n in names]), np.stack([pr[n] for n in names]))
    res.update(names=names, missing_in_est=sorted(set(pr) - set(pe)), missing_in_ref=sorted(set(pe) - set(pr)))
    return res


# ------------------------------------------------------------------------------------------------ the whole pipeline
def _prepare_out_dir(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CaptureInputError(f"the output path {out_dir} exists and is not a folder.")
    present = [n for n in MANAGED_OUTPUTS if os.path.lexists(os.path.join(out_dir, n))]
    if present and not overwrite:
        raise CaptureInputError(f"{out_dir} already holds {', '.join(present)}; pass --overwrite to "
                                f"replace them (other files there are kept).")
    for n in present:
        p = os.path.join(out_dir, n)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.remove(p)
    os.makedirs(out_dir, exist_ok=True)


def process_capture(input_path: str, out_dir: str, *, matcher: Optional[str] = None, camera_model: str = "OPENCV",
                    fps: float = 2.0, num_frames: Optional[int] = None, max_image_size: Optional[int] = 1600,
                    num_downscales: int = 0, overwrite: bool = False, refine_intrinsics: bool = True,
                    min_registered_fraction: float = 0.5, single_camera: bool = True, progress: bool = True,
                    console: Any = None) -> Dict[str, Any]:
    """Photos folder or video -> ``out_dir`` with images, COLMAP model, ``transforms.json`` and ``sparse_pc.ply``
    (layout in the module docstring). ``matcher`` None: ``sequential`` for a video, ``exhaustive`` for photos.
    ``max_image_size`` (None or 0: keep the resolution) bounds the longer side of the images written to
    ``out_dir/images``; the SfM runs on those, so the intrinsics are in their pixels. Returns a summary dict (also
    written to ``out_dir/colmap/summary.json``). Raises :class:`CaptureInputError` for bad inputs,
    :class:`ReconstructionError` when the SfM fails, ``MissingDependencyError`` without pycolmap."""
    input_path, out_dir = os.fspath(input_path), os.fspath(out_dir)
    t_start = time.perf_counter()
    if not os.path.exists(input_path):
        raise CaptureInputError(f"{input_path} does not exist.")
    video = os.path.isfile(input_path)
    if video and not input_path.lower().endswith(VIDEO_EXTENSIONS):
        raise CaptureInputError(f"{input_path} is a file but not a video ({', '.join(VIDEO_EXTENSIONS)}); give a "
                                f"video or a folder of photos.")
    if camera_model not in CAMERA_MODELS:
        raise CaptureInputError(f"camera model must be one of {', '.join(CAMERA_MODELS)}, got {camera_model!r}.")
    matcher = matcher or ("sequential" if video else "exhaustive")
    if matcher not in MATCHERS:
        raise CaptureInputError(f"matcher must be one of {', '.join(MATCHERS)}, got {matcher!r}.")
    if not 0 <= num_downscales <= 3:
        raise CaptureInputError(f"num_downscales must be 0..3, got {num_downscales}.")
    if max_image_size is not None and max_image_size < 0:
        raise CaptureInputError(f"max image size must be >= 0 (0: keep the resolution), got {max_image_size}.")
    check_output_dir(input_path, out_dir)
    names = [] if video else list_images(input_path)
    if not video and not names:
        raise CaptureInputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {input_path}.")
    if not video and len(names) < 2:
        raise CaptureInputError(f"structure from motion needs at least 2 images; {input_path} has {len(names)}.")
    _require_pycolmap()  # fail before copying anything
    _prepare_out_dir(out_dir, overwrite)

    timings: Dict[str, float] = {}
    image_dir = os.path.join(out_dir, "images")
    t0 = time.perf_counter()
    if video:
        paths = sample_video_frames(input_path, image_dir, fps=fps, num_frames=num_frames, max_size=max_image_size,
                                    progress=progress, console=console)
        names = [os.path.basename(p) for p in paths]
        timings["frames"] = time.perf_counter() - t0
    else:
        copy_images(input_path, image_dir, max_size=max_image_size, names=names, progress=progress, console=console)
        timings["images"] = time.perf_counter() - t0
    if num_downscales:
        t0 = time.perf_counter()
        write_downscaled(image_dir, out_dir, num_downscales, progress=progress, console=console)
        timings["downscales"] = time.perf_counter() - t0

    work_dir = os.path.join(out_dir, "colmap")
    rec = run_sfm(image_dir, work_dir, camera_model=camera_model, matcher=matcher,
                  max_image_size=max(max_image_size or 0, 3200), single_camera=single_camera, progress=progress,
                  image_names=names, refine_intrinsics=refine_intrinsics,
                  min_registered_fraction=min_registered_fraction, timings=timings, console=console)

    t0 = time.perf_counter()
    transforms = reconstruction_to_transforms(rec, {n: f"images/{n}" for n in names})
    num_points = write_points_ply(rec, os.path.join(out_dir, "sparse_pc.ply"))
    atomic_write_text(os.path.join(out_dir, "transforms.json"), json.dumps(transforms, indent=2) + "\n")
    timings["export"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    registered = registered_image_names(rec)
    summary = {
        "input": os.path.abspath(input_path), "output": os.path.abspath(out_dir), "video": video,
        "matcher": matcher, "camera_model": camera_model, "max_image_size": max_image_size,
        "num_images": len(names), "num_registered": len(registered),
        "unregistered": sorted(set(names) - set(registered)), "num_points3D": int(rec.num_points3D()),
        "num_points_ply": num_points, "mean_reprojection_error_px": float(rec.compute_mean_reprojection_error()),
        "mean_track_length": float(rec.compute_mean_track_length()),
        "num_models": len(os.listdir(os.path.join(work_dir, "sparse"))),
        "camera": {k: v for k, v in transforms.items() if k not in ("frames", "applied_transform", "ply_file_path")},
        "timings_s": timings,
    }
    atomic_write_text(os.path.join(work_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary

"""The Config dataclasses of the built-in data modules, in a module that imports no Lightning (nor torch).

Config validation (:func:`threestudio.utils.config.validate_config`) reads a data module's Config through
:func:`threestudio.registry.find_config`, which imports only this module; the data modules, which derive from
``pl.LightningDataModule``, set ``Config = <Class>Config`` and are imported when a run builds them. Subclass these
(or ``TheDataModule.Config``, the same class) for a data module of your own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple


@dataclass
class BaseDataModuleConfig:
    seed_offset: int = 0


# ------------------------------------------------------------------------------------------ random cameras
@dataclass
class RandomCameraConfig:
    height: Any = 64
    width: Any = 64
    batch_size: Any = 1
    resolution_milestones: List[int] = field(default_factory=list)
    eval_height: int = 512
    eval_width: int = 512
    eval_batch_size: int = 1
    n_val_views: int = 1
    n_test_views: int = 120
    elevation_range: Tuple[float, float] = (-10.0, 90.0)
    azimuth_range: Tuple[float, float] = (-180.0, 180.0)
    camera_distance_range: Tuple[float, float] = (1.0, 1.5)
    fovy_range: Tuple[float, float] = (40.0, 70.0)
    camera_perturb: float = 0.1
    center_perturb: float = 0.2
    up_perturb: float = 0.02
    light_position_perturb: float = 1.0
    light_distance_range: Tuple[float, float] = (0.8, 1.5)
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy_deg: float = 70.0
    light_sample_strategy: str = "dreamfusion"  # dreamfusion | magic3d
    batch_uniform_azimuth: bool = True
    progressive_until: int = 0  # widen elevation/azimuth from the eval view over this many steps


@dataclass
class RandomCameraDataModuleConfig(BaseDataModuleConfig, RandomCameraConfig):
    pass


@dataclass
class MultiviewCameraDataModuleConfig(RandomCameraDataModuleConfig):
    n_view: int = 4
    relative_radius: bool = True
    batch_size: Any = 4  # views per batch (a multiple of n_view), or a list with resolution_milestones
    elevation_range: Tuple[float, float] = (0.0, 30.0)
    fovy_range: Tuple[float, float] = (15.0, 60.0)
    camera_distance_range: Tuple[float, float] = (0.8, 1.0)  # relative to 1/tan(fovy/2) if relative_radius
    camera_perturb: float = 0.0
    center_perturb: float = 0.0
    up_perturb: float = 0.0
    eval_camera_distance: float = 3.0
    eval_fovy_deg: float = 40.0
    n_val_views: int = 4


# ------------------------------------------------------------------------------------------ posed images
@dataclass
class MultiviewDataModuleConfig(BaseDataModuleConfig):
    dataroot: str = "???"  # folder (or .json file); relative: to the current directory, else the repo root
    train_split: str = "train"  # split-file names: transforms_<split>.json
    val_split: str = "val"
    test_split: str = "test"
    test_every: int = 8  # one-file datasets without *_filenames: hold out frames 0, k, 2k, ... (0: none)
    downscale: int = 1  # training images: divide width and height by this (area averaging)
    eval_downscale: Optional[int] = None  # val/test images (None: same as downscale)
    batch_size: int = 4096  # rays per training step
    background: str = "white"  # white | black | random: what transparent pixels are composited on
    eval_background: Optional[str] = None  # white | black (None: background, white when that is random)
    center: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # world point mapped to the origin (recenter: none)
    recenter: str = "none"  # none | focus (optical axes' nearest point) | cameras (mean camera position)
    orient: str = "none"  # none | up (rotate the training cameras' mean up vector to +z)
    scene_scale: float = 1.0  # multiplies world coordinates after recentring
    camera_radius: Optional[float] = None  # rescale so the mean training camera distance is this
    camera_extent: bool = False  # rescale so the training cameras fill [-1, 1]^3 (unless camera_radius is set)
    n_val_views: int = 1  # evenly spread held-out views for validation (0: all)
    n_test_views: int = 0  # evenly spread held-out views for test/predict (0: all)
    load_to_device: bool = True  # move the training pixels/rays to the training device (else keep on CPU)
    # lens distortion (OPENCV k1..k4, p1, p2; OPENCV_FISHEYE k1..k4): apply (ray directions are undistorted
    # numerically, images are never resampled for ray sampling) | ignore (pinhole, with a warning) | error
    distortion: str = "apply"
    # render our procedural scene into dataroot first if it is not there yet (the quick start); keys are
    # make_scene's arguments (n_train, n_test, resolution, seed, ...); a relative dataroot is then taken
    # relative to the repository root, so every run reuses one copy
    synthetic_scene: Optional[Dict[str, Any]] = None


@dataclass
class MultiviewImagesDataModuleConfig(MultiviewDataModuleConfig):
    batch_size: int = 1  # training images per step
    patch_size: Optional[int] = None  # random square crops of this size (None: whole images)
    undistort_cache: Optional[str] = None  # folder for undistorted photos (None: the threestudio cache)

"""The Config dataclasses of the exporters, in a module that imports no torch (see :mod:`threestudio.models.schema`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from threestudio.models.schema import BaseObjectConfig
from threestudio.utils.config import bounded


# ------------------------------------------------------------------------------------------ base.py
@dataclass
class ExporterConfig(BaseObjectConfig):
    save_video: bool = False


# ------------------------------------------------------------------------------------------ mesh_exporter.py
@dataclass
class MeshExporterConfig(ExporterConfig):
    # threestudio's format switch, kept so its recipes load: "obj-mtl" (textured OBJ), "obj" (OBJ with vertex
    # colours, no UVs) or "glb". When set it overrides `formats` (and `save_uv` for "obj-mtl"/"obj").
    fmt: Optional[str] = None
    formats: List[str] = field(default_factory=lambda: ["obj", "glb"])  # any of "obj", "glb"
    save_name: str = "model"  # file stem under it<step>-export/
    save_uv: bool = True  # unwrap with xatlas (needed for a texture)
    save_texture: bool = True  # bake the material's albedo into a texture (or per-vertex colours without UVs)
    save_normal: bool = False  # write vertex normals
    texture_size: int = bounded(1024, ge=16, le=16384)  # texture width = height, in texels
    texture_padding: int = 2  # texels of colour dilation around charts; -1 fills every empty texel
    texture_format: str = "png"  # textures are written as PNG; "jpg" (threestudio's default) is accepted
    max_faces: int = bounded(200000, ge=0)  # decimate above this many faces before unwrapping; 0 = never
    decimate_method: str = "auto"  # auto | quadric (needs fast-simplification) | cluster
    xatlas_chart_options: dict = field(default_factory=dict)  # attributes of xatlas.ChartOptions
    xatlas_pack_options: dict = field(default_factory=dict)  # attributes of xatlas.PackOptions
    xatlas_subprocess: bool = True  # run xatlas in a child process, so that a crash in it is reported
    vertex_colors_when_no_uv: bool = True  # with save_uv false: bake colours per vertex
    query_chunk: int = 65536  # points per geometry/material query while baking
    context_type: Optional[str] = None  # threestudio's rasterizer context; unused (baking is pure PyTorch)


# ------------------------------------------------------------------------------------------ explicit_mesh_exporter.py
@dataclass
class ExplicitMeshExporterConfig(MeshExporterConfig):
    keep_source_texture: bool = True  # write a geometry's own UVs and texture when it has them

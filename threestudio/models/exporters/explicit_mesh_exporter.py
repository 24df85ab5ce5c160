"""``explicit-mesh-exporter``: textured OBJ/GLB of an explicit geometry (``tetrahedra-sdf-grid``, ``custom-mesh``).

A geometry that carries its own UV layout and texture (``custom-mesh`` with ``texture: mesh`` and a texture image:
``textured_mesh()``) is written as it is: its UVs and image, no re-unwrap, no re-bake. Every other geometry goes
through ``mesh-exporter``'s pipeline (same config keys): the mesh from ``isosurface()`` (for DMTet / FlexiCubes the
extraction of the current SDF, as rendered), decimation above ``max_faces``, an xatlas UV unwrap, and a texture baked
by rasterizing the UV layout and querying ``geometry.export`` -> ``material.export`` at every covered texel.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

import threestudio
from threestudio.models.exporters.base import ExporterOutput
from threestudio.models.exporters.mesh_exporter import MeshExporter
from threestudio.models.exporters.schema import ExplicitMeshExporterConfig
from threestudio.models.mesh import vertex_normals
from threestudio.utils.log import info


@threestudio.register("explicit-mesh-exporter")
class ExplicitMeshExporter(MeshExporter):
    Config = ExplicitMeshExporterConfig

    cfg: Config

    def __call__(self) -> List[ExporterOutput]:
        src = getattr(self.geometry, "textured_mesh", None)
        data = src() if (self.cfg.keep_source_texture and callable(src)) else None
        if data is None:
            return super().__call__()
        v_pos, t_pos_idx, v_tex, t_tex_idx, texture = (t.detach().cpu() for t in data)
        # GLB (and our OBJ writer) want one UV per vertex: split vertices where a position has several UVs
        pairs = torch.stack([t_pos_idx.reshape(-1), t_tex_idx.reshape(-1)], 1)
        uniq, inv = torch.unique(pairs, dim=0, return_inverse=True)
        faces = inv.view(-1, 3)
        params: Dict[str, Any] = {"formats": list(self.formats), "v_pos": v_pos[uniq[:, 0]], "t_pos_idx": faces,
                                  "v_tex": v_tex[uniq[:, 1]], "t_tex_idx": faces, "texture": texture.float(),
                                  "v_nrm": (vertex_normals(v_pos, t_pos_idx)[uniq[:, 0]] if self.cfg.save_normal
                                            else None)}
        info(f"explicit-mesh-exporter: writing the source mesh's own UVs and {texture.shape[1]}x{texture.shape[0]} "
             f"texture ({faces.shape[0]} faces)")
        return [ExporterOutput(save_name=self.cfg.save_name, save_type="mesh", params=params)]

"""Textured mesh export of GET3D samples through threestudio's ``mesh-exporter`` (xatlas UVs, texture baked from
the texture field with ``threestudio.ops.uv_bake``, OBJ + MTL + PNG and GLB).

Per sample: w from the (frozen) mapping networks with truncation ``psi`` -> triplanes -> mesh -> the exporter asks
``export(points)`` for texture features at every covered texel's 3D point and ``to_rgb`` maps them to the albedo
(``(rgb + 1) / 2``, as GET3D's texture maps).
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from threestudio.models.mesh import Mesh


class _SampleField:
    """One sample's mesh and texture field, in the geometry/material interface the mesh exporter expects."""

    def __init__(self, gen, verts, faces, tex_planes, ws_tex) -> None:
        self.gen, self.verts, self.faces = gen, verts, faces
        self.tex_planes, self.ws_tex = tex_planes, ws_tex
        self.device = verts.device

    def isosurface(self) -> Mesh:
        return Mesh(self.verts, self.faces)

    @torch.no_grad()
    def export(self, points: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"features": self.gen.query_texture(self.tex_planes, self.ws_tex, points[None])[0]}


class _ToRGBMaterial:
    def __init__(self, gen, ws_tex) -> None:
        self.gen, self.ws_tex = gen, ws_tex

    @torch.no_grad()
    def export(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        rgb = self.gen.to_rgb(features[None], self.ws_tex)[0]
        return {"albedo": ((rgb + 1) / 2).clamp(0, 1)}


@torch.no_grad()
def sample_mesh(gen, ws_tex: torch.Tensor, ws_geo: torch.Tensor):
    """(verts, faces, tex_planes) of one sample (ws [1, L, D])."""
    sdf_planes, tex_planes = gen.planes(ws_tex, ws_geo)
    m = gen.extract_meshes(sdf_planes, ws_geo)
    return m["verts"], m["faces"], tex_planes


def export_meshes(saver, gen, mapper, z: torch.Tensor, psi: float, folder: str, exporter_cfg: Dict[str, Any]
                  ) -> List[str]:
    """Export one textured mesh per latent pair ``z`` [N, 2, z_dim] into ``<save dir>/<folder>/sample_<i>.*``."""
    from threestudio.models.exporters.mesh_exporter import MeshExporter

    written: List[str] = []
    for i in range(z.shape[0]):
        ws_tex, ws_geo = mapper.map(z[i:i + 1, 0], z[i:i + 1, 1], psi)
        verts, faces, tex_planes = sample_mesh(gen, ws_tex, ws_geo)
        if faces.shape[0] == 0:
            raise RuntimeError(f"sample {i}: the generator produced an empty mesh; nothing to export")
        field = _SampleField(gen, verts, faces, tex_planes, ws_tex)
        cfg = dict(exporter_cfg)
        cfg["save_name"] = f"sample_{i}"
        exporter = MeshExporter(cfg, geometry=field, material=_ToRGBMaterial(gen, ws_tex))
        for out in exporter():
            res = saver.save_mesh(f"{folder}/{out.save_name}", **out.params)
            written += res if isinstance(res, list) else [res]
    return written

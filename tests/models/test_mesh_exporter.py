"""The mesh exporter on a fake sphere whose colour is a known function of position, written through the system's
saver and read back with trimesh."""

import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import threestudio.models.exporters.mesh_exporter as me
from threestudio.models.exporters.mesh_exporter import MeshExporter
from threestudio.models.mesh import Mesh
from threestudio.utils.saving import SaverMixin

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("xatlas")

RADIUS = 0.6


def gradient_colour(p: torch.Tensor) -> torch.Tensor:
    """A smooth, asymmetric colour field: a flipped or mirrored texture cannot match it."""
    return (0.5 + 0.7 * p).clamp(0, 1)


def red_blue_colour(p: torch.Tensor) -> torch.Tensor:
    red, blue = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    return torch.where(p[:, 2:3] > 0, red, blue)


class FakeSphere(nn.Module):
    def __init__(self, subdivisions: int = 3, empty: bool = False) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))
        m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=RADIUS)
        self.v = torch.tensor(m.vertices, dtype=torch.float32)
        self.f = torch.tensor(m.faces, dtype=torch.long)
        self.empty = empty
        self.queries = 0

    def isosurface(self) -> Mesh:
        if self.empty:
            return Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long))
        return Mesh(self.v.clone(), self.f.clone())

    def export(self, points: torch.Tensor) -> dict:
        self.queries += 1
        return {"features": points * 2.0}  # the material undoes the scale: features are not colours


class FakeMaterial(nn.Module):
    def __init__(self, colour_fn=gradient_colour, with_albedo: bool = True) -> None:
        super().__init__()
        self.colour_fn = colour_fn
        self.with_albedo = with_albedo

    def export(self, features: torch.Tensor) -> dict:  # no **kwargs: the exporter passes only `features`
        return {"albedo": self.colour_fn(features / 2.0)} if self.with_albedo else {}


class Saver(SaverMixin):
    pass


def make(cfg=None, geometry=None, material=None):
    base = {"texture_size": 256, "xatlas_subprocess": False}
    base.update(cfg or {})
    return MeshExporter(base, geometry=geometry or FakeSphere(), material=material or FakeMaterial())


def save(tmp_path, out):
    saver = Saver()
    saver.set_save_dir(str(tmp_path))
    (o,) = out
    assert o.save_type == "mesh"
    return saver.save_mesh(f"it0-export/{o.save_name}", **o.params)


def sample(image, uv):
    """Nearest-texel lookup with the OBJ/glTF convention (v up, image row 0 at v = 1)."""
    img = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    h, w = img.shape[:2]
    cols = np.clip(np.floor(uv[:, 0] * w).astype(int), 0, w - 1)
    rows = np.clip(np.floor((1.0 - uv[:, 1]) * h).astype(int), 0, h - 1)
    return img[rows, cols]


def loaded_mesh(path):
    obj = trimesh.load(path, process=False)
    if isinstance(obj, trimesh.Scene):
        (obj,) = obj.geometry.values()
    return obj


def test_registered():
    # (threestudio.find would first import every built-in module; the registry tables say the same thing)
    from threestudio.registry import _families, _modules

    assert MeshExporter.registered_name == "mesh-exporter"
    assert _modules["mesh-exporter"] is MeshExporter and _families["mesh-exporter"] == "exporter"


@pytest.mark.parametrize("subprocess", [True, False])
def test_glb_and_obj_read_back_with_texture_colours_at_vertex_uvs(tmp_path, subprocess):
    exporter = make({"xatlas_subprocess": subprocess})
    paths = save(tmp_path, exporter())
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["model.glb", "model.mtl", "model.obj", "model_texture_kd.png"]

    for path, get_image in ((tmp_path / "it0-export" / "model.glb", lambda m: m.visual.material.baseColorTexture),
                            (tmp_path / "it0-export" / "model.obj", lambda m: m.visual.material.image)):
        mesh = loaded_mesh(str(path))
        uv = np.asarray(mesh.visual.uv)
        assert uv.shape == (len(mesh.vertices), 2)
        assert uv.min() >= 0.0 and uv.max() <= 1.0
        image = get_image(mesh)
        assert image.size == (256, 256)
        got = sample(image, uv)
        want = gradient_colour(torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32)).numpy()
        err = np.abs(got - want)
        assert np.median(err) < 0.01, path
        assert err.max() < 0.05, path
        # the surface is the isosurface, in world coordinates
        assert np.allclose(np.linalg.norm(mesh.vertices, axis=1), RADIUS, atol=1e-4)
        assert len(mesh.faces) == 1280


def test_red_blue_hemispheres_and_padding(tmp_path):
    exporter = make({"texture_padding": 3, "formats": ["glb"]}, material=FakeMaterial(red_blue_colour))
    out = exporter()
    params = out[0].params
    # the texture itself: covered texels and their padding are red or blue, far-away empty texels stay black
    tex = params["texture"]
    assert tex.shape == (256, 256, 3)
    is_red = (tex - torch.tensor([1.0, 0, 0])).abs().sum(-1) < 1e-6
    is_blue = (tex - torch.tensor([0, 0, 1.0])).abs().sum(-1) < 1e-6
    is_black = tex.abs().sum(-1) == 0
    assert bool((is_red | is_blue | is_black).all())
    assert int(is_red.sum()) > 1000 and int(is_blue.sum()) > 1000
    save(tmp_path, out)
    mesh = loaded_mesh(str(tmp_path / "it0-export" / "model.glb"))
    z = np.asarray(mesh.vertices)[:, 2]
    got = sample(mesh.visual.material.baseColorTexture, np.asarray(mesh.visual.uv))
    away = np.abs(z) > 0.15  # vertices away from the equator, where the colour jumps
    assert away.sum() > 100
    assert np.allclose(got[away & (z > 0)], [1, 0, 0], atol=1 / 255)
    assert np.allclose(got[away & (z < 0)], [0, 0, 1], atol=1 / 255)


def test_padding_dilates_around_charts():
    pack = {"xatlas_pack_options": {"padding": 4}}  # the same chart layout for all three
    tight = make({"texture_padding": 0, **pack})()[0].params["texture"]
    padded = make({"texture_padding": 2, **pack})()[0].params["texture"]
    filled = make({"texture_padding": -1, **pack})()[0].params["texture"]
    n_tight = int((tight.abs().sum(-1) > 0).sum())
    n_padded = int((padded.abs().sum(-1) > 0).sum())
    assert n_padded > n_tight
    assert bool((filled.abs().sum(-1) > 0).all())  # -1: every texel filled
    covered = tight.abs().sum(-1) > 0
    assert torch.equal(padded[covered], tight[covered])  # dilation never changes covered texels


def test_face_budget_triggers_decimation(monkeypatch):
    logged = []
    import threestudio.ops.decimate as dec

    monkeypatch.setattr(dec, "info", lambda msg, *a, **k: logged.append(msg))
    geometry = FakeSphere(subdivisions=4)  # 5120 faces
    out = make({"max_faces": 800, "decimate_method": "cluster"}, geometry=geometry)()
    p = out[0].params
    assert p["t_pos_idx"].shape[0] <= 800 and p["t_pos_idx"].shape[0] > 400
    assert p["v_tex"].shape[0] == p["v_pos"].shape[0]  # one UV per vertex (GLB)
    assert any("5120 ->" in m for m in logged)
    # no budget: the full mesh
    out = make({"max_faces": 0}, geometry=FakeSphere(subdivisions=4))()
    assert out[0].params["t_pos_idx"].shape[0] == 5120


def test_vertex_colours_without_uv_and_normals(tmp_path):
    exporter = make({"fmt": "obj", "save_normal": True})  # threestudio's fmt=obj: OBJ with vertex colours
    out = exporter()
    p = out[0].params
    assert p["formats"] == ["obj"] and "v_tex" not in p and "texture" not in p
    assert torch.allclose(p["v_rgb"], gradient_colour(p["v_pos"]), atol=1e-6)
    assert torch.allclose(p["v_nrm"], p["v_pos"] / RADIUS, atol=0.02)
    (path,) = save(tmp_path, out)
    mesh = loaded_mesh(path)
    cols = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
    assert np.abs(cols - gradient_colour(torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32)).numpy()
                  ).max() < 0.01


def test_normals_follow_uv_seam_split():
    p = make({"save_normal": True, "save_texture": False})()[0].params
    assert "texture" not in p and p["v_tex"].shape[0] == p["v_pos"].shape[0]
    # split seam vertices share their normal (computed before the split), and normals point outward
    assert torch.allclose(p["v_nrm"], p["v_pos"] / RADIUS, atol=0.02)


def test_empty_isosurface_is_a_clear_error():
    with pytest.raises(ValueError, match=r"isosurface of FakeSphere is empty \(0 faces\).*isosurface_threshold"):
        make(geometry=FakeSphere(empty=True))()


def test_material_without_albedo_is_a_clear_error():
    with pytest.raises(ValueError, match=r"FakeMaterial.export\(features=...\) returned \[\] without 'albedo'.*"
                                         r"save_texture=false"):
        make(material=FakeMaterial(with_albedo=False))()


def test_query_chunks():
    geometry = FakeSphere()
    out = make({"query_chunk": 5000}, geometry=geometry)()
    covered = int((out[0].params["texture"].abs().sum(-1) > 0).sum())  # padding 2: more than the queried texels
    assert geometry.queries >= 2 and geometry.queries <= covered // 5000 + 1


@pytest.mark.parametrize("cfg,match", [
    ({"xatlas_chart_options": {"max_chart_aera": 0.5}},
     r"system.exporter.xatlas_chart_options.max_chart_aera: unknown xatlas ChartOptions option. "
     r"Did you mean 'max_chart_area'\?"),
    ({"xatlas_pack_options": {"padding": "wide"}}, r"xatlas_pack_options.padding: expected a int, got 'wide'"),
    ({"formats": ["obj", "fbx"]}, r"system.exporter.formats: \['obj', 'fbx'\] is not a non-empty list of obj / glb"),
    ({"fmt": "ply"}, r"system.exporter.fmt: unknown value 'ply'"),
    ({"texture_size": 8}, r"texture_size: must be >= 16 and <= 16384 for MeshExporter, got 8"),
    ({"texture_padding": -2}, r"texture_padding: -2 must be >= 0"),
    ({"decimate_method": "qem"}, r"decimate_method: 'qem' is not one of auto, quadric, cluster"),
    ({"query_chunk": 0}, r"query_chunk: 0 must be a positive"),
])
def test_config_errors_name_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        make(cfg)


def test_unknown_key_is_rejected():
    with pytest.raises(Exception, match="texture_sise"):
        make({"texture_sise": 512})


def test_xatlas_crash_becomes_an_error(monkeypatch):
    monkeypatch.setattr(me, "_XATLAS_WORKER", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(RuntimeError, match=r"(?s)xatlas UV unwrapping of 1280 faces was killed by signal 11 "
                                           r"\(SIGSEGV\).*save_uv=false"):
        make({"xatlas_subprocess": True})()

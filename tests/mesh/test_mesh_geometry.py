"""tetrahedra-sdf-grid (DMTet / FlexiCubes), its conversion from trained implicit geometry, custom-mesh and the
explicit-mesh exporter."""

import math

import numpy as np
import pytest
import torch

import threestudio
from threestudio.utils.config import ConfigError

trimesh = pytest.importorskip("trimesh")

SMALL_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
              "base_resolution": 4, "max_resolution": 32}
FREQ = {"otype": "Frequency", "n_frequencies": 4, "include_xyz": True}
MLP = {"otype": "VanillaMLP", "n_neurons": 16, "n_hidden_layers": 1}


def dmtet(**cfg):
    base = {"isosurface_resolution": 32, "radius": 1.0, "pos_encoding_config": SMALL_GRID,
            "mlp_network_config": MLP, "tet_cache_dir": None}
    base.update(cfg)
    return threestudio.find("tetrahedra-sdf-grid")(base)


def to_trimesh(mesh):
    return trimesh.Trimesh(mesh.v_pos.detach().cpu().numpy(), mesh.t_pos_idx.cpu().numpy())


def point_mesh_distance(p, mesh, chunk=512, k=24):
    """Exact distance from points [N, 3] to a triangle mesh: the closest point on each of the ``k`` triangles with
    the nearest centroids (enough for meshes whose triangles are much smaller than the distances measured)."""
    tri_all = torch.tensor(np.asarray(mesh.triangles), dtype=torch.float32)
    cent = tri_all.mean(1)
    out = []
    for i in range(0, p.shape[0], chunk):
        q = p[i:i + chunk, None]  # [n, 1, 3]
        near = torch.cdist(q[:, 0], cent).topk(min(k, cent.shape[0]), largest=False).indices  # [n, k]
        tri = tri_all[near]  # [n, k, 3, 3]
        A, B, C = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
        n = torch.nn.functional.normalize(torch.cross(B - A, C - A, dim=-1), dim=-1)
        h = ((q - A) * n).sum(-1)
        proj = q - h[..., None] * n
        inside = torch.ones_like(h, dtype=torch.bool)
        for a, b in ((A, B), (B, C), (C, A)):
            inside &= (torch.cross(b - a, proj - a, dim=-1) * n).sum(-1) >= 0
        d = torch.where(inside, h.abs(), torch.full_like(h, float("inf")))
        for a, b in ((A, B), (B, C), (C, A)):
            t = (((q - a) * (b - a)).sum(-1) / ((b - a) ** 2).sum(-1).clamp_min(1e-20)).clamp(0, 1)
            d = torch.minimum(d, (q - (a + t[..., None] * (b - a))).norm(dim=-1))
        out.append(d.min(1).values)
    return torch.cat(out)


def chamfer(a, b, n=2000):
    """Symmetric mean distance from points sampled on each mesh to the other mesh (exact point-to-triangle)."""
    pa = torch.as_tensor(trimesh.sample.sample_surface(a, n, seed=0)[0], dtype=torch.float32)
    pb = torch.as_tensor(trimesh.sample.sample_surface(b, n, seed=1)[0], dtype=torch.float32)
    return float(point_mesh_distance(pa, b).mean() + point_mesh_distance(pb, a).mean()) / 2


@pytest.mark.parametrize("iso", ["dmtet", "flexicubes"])
def test_sphere_init_meshes_and_gets_gradients(iso, tmp_path):
    geo = dmtet(isosurface=iso, isosurface_resolution=64, shape_init="sphere", shape_init_params=0.6,
                tet_cache_dir=str(tmp_path))
    geo.train()
    mesh = geo.isosurface()
    m = to_trimesh(mesh)
    assert m.is_watertight and m.area == pytest.approx(4 * math.pi * 0.36, rel=0.03)
    loss = mesh.v_pos.norm(dim=-1).sum() + mesh.extras["sdf_reg"] + mesh.normal_consistency()
    if iso == "flexicubes":
        loss = loss + mesh.extras["flexicubes_dev"] + mesh.extras["flexicubes_weight_reg"]
    loss.backward()
    assert geo.sdf.grad.abs().sum() > 0 and geo.deformation.grad.abs().sum() > 0
    if iso == "flexicubes":
        assert geo.flexicubes_weights.grad.abs().sum() > 0
    # the deformation moves the surface: offsets along +x shift the mesh
    with torch.no_grad():
        geo.deformation[:, 0] = 2.0  # tanh(2) * 0.5 cube edge
    shift = geo.cell_size * 0.5 * math.tanh(2.0)
    moved = geo.isosurface().v_pos.detach()
    assert float(moved[:, 0].mean() - mesh.v_pos.detach()[:, 0].mean()) == pytest.approx(shift, rel=0.05)
    out = geo(torch.rand(5, 3))
    assert out["features"].shape == (5, 3)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"system.geometry.isosurface: unknown 'marching'"):
        dmtet(isosurface="marching")
    with pytest.raises(ValueError, match=r"isosurface_resolution: 33 must be an even number"):
        dmtet(isosurface_resolution=33)
    with pytest.raises(ConfigError, match="did you mean 'isosurface_resolution'"):
        dmtet(isosurface_resolutoin=64)


def fit_implicit_volume(steps=80):
    """A small implicit-volume trained by density regression to a rounded box of half size 0.45 x 0.3 x 0.25."""
    torch.manual_seed(0)
    geo = threestudio.find("implicit-volume")({"radius": 1.0, "density_bias": 0.0, "density_activation": "relu",
                                               "normal_type": "none", "isosurface_threshold": 5.0,
                                               "isosurface_resolution": 64, "pos_encoding_config": FREQ,
                                               "mlp_network_config": {"otype": "VanillaMLP", "n_neurons": 32,
                                                                      "n_hidden_layers": 2}})
    half = torch.tensor([0.45, 0.3, 0.25])

    def target(p):
        q = p.abs() - half
        d = q.clamp(min=0).norm(dim=-1) + q.max(-1).values.clamp(max=0) - 0.05
        return 10 * torch.sigmoid(-d / 0.05)

    opt = torch.optim.Adam(geo.parameters(), lr=0.01)
    for _ in range(steps):
        p = torch.rand(1024, 3) * 2 - 1
        loss = ((geo.forward_density(p)[:, 0] - target(p)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return geo


def test_conversion_from_a_trained_density_keeps_the_shape_and_the_texture():
    vol = fit_implicit_volume()
    reference = to_trimesh(vol.isosurface())  # marching cubes of the trained field at its threshold
    assert reference.area > 1.0
    for iso in ("dmtet", "flexicubes"):
        grid = threestudio.find("tetrahedra-sdf-grid").create_from(
            vol, {"isosurface": iso, "isosurface_resolution": 64, "radius": 1.0, "pos_encoding_config": FREQ,
                  "mlp_network_config": {"otype": "VanillaMLP", "n_neurons": 32, "n_hidden_layers": 2}},
            copy_net=True)
        mesh = grid.isosurface()
        d = chamfer(to_trimesh(mesh), reference)
        assert d < 0.01, (iso, d)  # a third of a cube edge (1/32) on a shape 0.9 wide
        # and not a coincidence: a sphere is far from the box
        far = chamfer(to_trimesh(dmtet(isosurface_resolution=64, shape_init_params=0.4).isosurface()), reference)
        assert far > 5 * d
    # the texture field came along (same features at the same world points)
    p = torch.rand(64, 3) * 1.6 - 0.8
    assert torch.allclose(grid(p)["features"], vol.export(p)["features"], atol=1e-6)


def test_conversion_from_an_sdf_and_from_another_grid():
    sdf_geo = threestudio.find("implicit-sdf")({"radius": 1.0, "sdf_bias": "ellipsoid",
                                                "sdf_bias_params": [0.5, 0.35, 0.25], "n_feature_dims": 0,
                                                "pos_encoding_config": SMALL_GRID, "mlp_network_config": MLP,
                                                "isosurface_resolution": 64})
    reference = to_trimesh(sdf_geo.isosurface())
    grid = threestudio.find("tetrahedra-sdf-grid").create_from(
        sdf_geo, {"isosurface_resolution": 64, "radius": 1.0, "geometry_only": True}, copy_net=False)
    assert chamfer(to_trimesh(grid.isosurface()), reference) < 0.01
    # a finer grid resampled from this one keeps the shape too
    finer = threestudio.find("tetrahedra-sdf-grid").create_from(
        grid, {"isosurface_resolution": 96, "radius": 1.0, "geometry_only": True}, copy_net=False)
    assert chamfer(to_trimesh(finer.isosurface()), reference) < 0.01
    # the same lattice is copied exactly, offsets included
    with torch.no_grad():
        finer.deformation.uniform_(-1, 1)
    twin = threestudio.find("tetrahedra-sdf-grid").create_from(
        finer, {"isosurface_resolution": 96, "radius": 1.0, "geometry_only": True}, copy_net=False)
    assert torch.equal(twin.isosurface().v_pos, finer.isosurface().v_pos)
    with pytest.raises(ValueError, match="never crosses the isosurface threshold"):
        far = threestudio.find("implicit-sdf")({"radius": 1.0, "sdf_bias": 5.0, "pos_encoding_config": SMALL_GRID,
                                                "mlp_network_config": MLP})
        threestudio.find("tetrahedra-sdf-grid").create_from(far, {"isosurface_resolution": 32}, copy_net=False)
    with pytest.raises(ValueError, match="geometry_convert_inherit_texture"):
        threestudio.find("tetrahedra-sdf-grid").create_from(
            sdf_geo, {"isosurface_resolution": 32, "pos_encoding_config": SMALL_GRID, "mlp_network_config": MLP},
            copy_net=True)


# ---------------------------------------------------------------------------------------------------- custom mesh
def textured_box(path):
    from PIL import Image

    m = trimesh.creation.box(extents=(1.0, 0.6, 0.4))
    img = np.zeros((8, 8, 3), np.uint8)
    img[:4, :4] = [255, 0, 0]
    img[:4, 4:] = [0, 255, 0]
    img[4:, :4] = [0, 0, 255]
    img[4:, 4:] = [255, 255, 0]
    uv = np.stack([(m.vertices[:, 0] > 0) * 0.5 + 0.25, (m.vertices[:, 1] > 0) * 0.5 + 0.25], 1)
    m.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(img))
    m.export(path)
    return m


@pytest.mark.parametrize("ext", ["glb", "obj"])
def test_custom_mesh_loads_texture_in_the_right_orientation(ext, tmp_path):
    path = tmp_path / f"box.{ext}"
    textured_box(str(path))
    geo = threestudio.find("custom-mesh")({"mesh_path": str(path), "shape_init_params": None})
    assert geo.texture_mode == "mesh"
    m = geo.isosurface()
    assert m.v_pos.shape == (8, 3) and m.t_pos_idx.shape == (12, 3) and m.v_tex is not None
    # uv (0.25, 0.75) is in the top-left quarter of the image (row 0 = v = 1): red
    rgb = torch.sigmoid(geo.uv_features(torch.tensor([[0.25, 0.75], [0.75, 0.75], [0.25, 0.25],
                                                      [0.75, 0.25]]))["features"])
    assert torch.allclose(rgb, torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]), atol=1e-3)


def test_custom_mesh_axes_scale_field_mode_and_errors(tmp_path):
    path = tmp_path / "box.ply"
    trimesh.creation.box(extents=(1.0, 0.6, 0.4)).export(path)
    geo = threestudio.find("custom-mesh")({"mesh_path": str(path), "shape_init_params": 0.9,
                                           "shape_init_mesh_up": "+y", "shape_init_mesh_front": "+x",
                                           "pos_encoding_config": SMALL_GRID, "mlp_network_config": MLP})
    assert geo.texture_mode == "field"
    v = geo.v_pos
    assert float(v.norm(dim=-1).max()) == pytest.approx(0.9)
    ext = (v.max(0).values - v.min(0).values) / float(v.norm(dim=-1).max() * 2 / math.sqrt(1 + 0.36 + 0.16))
    # the file's y (0.6) is now up (z), its z (0.4) points to -y... its extents along (x, y, z): (1.0, 0.4, 0.6)
    assert torch.allclose(ext, torch.tensor([1.0, 0.4, 0.6]), atol=1e-4)
    assert geo(torch.rand(3, 3))["features"].shape == (3, 3)
    with pytest.raises(FileNotFoundError, match="looked in"):
        threestudio.find("custom-mesh")({"mesh_path": "load/shapes/nope.obj"})
    with pytest.raises(ValueError, match="needs a mesh file"):
        threestudio.find("custom-mesh")({})
    with pytest.raises(ValueError, match="has no texture image or vertex colours"):
        threestudio.find("custom-mesh")({"mesh_path": str(path), "texture": "mesh"})


def test_explicit_exporter_writes_the_source_texture_and_bakes_dmtet(tmp_path):
    from threestudio.utils.saving import SaverMixin

    src = tmp_path / "box.glb"
    textured_box(str(src))
    saver = SaverMixin()
    saver.set_save_dir(str(tmp_path / "save"))
    geo = threestudio.find("custom-mesh")({"mesh_path": str(src), "shape_init_params": None})
    mat = threestudio.find("no-material")({})
    exp = threestudio.find("explicit-mesh-exporter")({"formats": ["glb", "obj"]}, geometry=geo, material=mat)
    (out,) = exp()
    files = saver.save_mesh("it0-export/model", **out.params)
    glb = trimesh.load([f for f in files if f.endswith(".glb")][0], force="mesh")
    assert len(glb.faces) == 12
    tex = np.asarray(glb.visual.material.baseColorTexture.convert("RGB"))
    assert tex.shape == (8, 8, 3) and tuple(tex[0, 0]) == (255, 0, 0) and tuple(tex[7, 7]) == (255, 255, 0)
    # every corner keeps its UV: the +x corners sit at u = 0.75
    right = glb.vertices[:, 0] > 0
    assert np.allclose(glb.visual.uv[right, 0], 0.75) and np.allclose(glb.visual.uv[~right, 0], 0.25)
    # a DMTet grid goes through the unwrap + bake pipeline
    grid = dmtet(shape_init_params=0.5)
    exp = threestudio.find("explicit-mesh-exporter")({"texture_size": 64, "xatlas_subprocess": False},
                                                     geometry=grid, material=mat)
    (out,) = exp()
    assert out.params["texture"].shape == (64, 64, 3) and out.params["v_tex"].shape[1] == 2

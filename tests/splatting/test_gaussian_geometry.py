"""The gaussian-splatting geometry: PLY round trip (write, read, render identical), the standard 3DGS layout,
initialisation from a ball, a point cloud and a coloured mesh, resizing on load, and the renderer's cameras."""

import math

import numpy as np
import pytest
import torch

import threestudio
from threestudio.models.geometry.gaussian_splatting import (
    GaussianInitError,
    ply_property_names,
    read_gaussian_ply,
)
from threestudio.ops import cameras as cam


def geometry(**kw):
    cfg = {"init_num_points": 60, "init_radius": 0.4, "sh_degree": 3, "sh_degree_interval": 0, **kw}
    return threestudio.find("gaussian-splatting")(cfg)


def randomise(geo, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in geo.params.values():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def renderer(geo, background=None):
    return threestudio.find("gaussian-splatting-renderer")({"backend": "torch"}, geometry=geo, material=None,
                                                           background=background)


def eval_batch(n=2, size=24):
    tt = cam.turntable(n, 20.0, 1.6, 50.0)
    return {"c2w": tt["c2w"], "fovy_rad": tt["fovy"], "height": size, "width": size,
            "bg_color": torch.tensor([0.2, 0.3, 0.4])}


def test_ply_round_trip_renders_identical_images(tmp_path):
    geo = geometry()
    randomise(geo)
    path = str(tmp_path / "scene.ply")
    geo.save_ply(path)
    back = geometry(init_type="ply", init_path=path, sh_degree_interval=1000)  # a PLY starts with all its bands
    assert back.num_gaussians == 60 and back.active_sh_degree == 3
    for k in geo.params:
        torch.testing.assert_close(back.params[k], geo.params[k], rtol=0, atol=0)
    a = renderer(geo)(**eval_batch())
    b = renderer(back)(**eval_batch())
    assert float(a["opacity"].detach().max()) > 0.5
    assert torch.equal(a["comp_rgb"], b["comp_rgb"]) and torch.equal(a["depth"], b["depth"])


def test_ply_layout_is_the_standard_3dgs_one(tmp_path):
    geo = geometry(sh_degree=1)  # fewer bands: f_rest is still padded to 45
    randomise(geo, 1)
    path = tmp_path / "g.ply"
    geo.save_ply(str(path))
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode().splitlines()
    assert header[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 60"]
    names = [h.split()[2] for h in header if h.startswith("property float ")]
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expected == ply_property_names()
    assert len(data) - end == 60 * 62 * 4
    rec = np.frombuffer(data[end:], dtype="<f4").reshape(60, 62)
    p = {k: v.detach().numpy() for k, v in geo.params.items()}
    np.testing.assert_array_equal(rec[:, :3], p["means"])
    np.testing.assert_array_equal(rec[:, 6:9], p["sh0"][:, 0])
    # f_rest is channel-major: f_rest_0..14 red (bands 1..15), 15..29 green, 30..44 blue; degree 1 fills 3 each
    np.testing.assert_array_equal(rec[:, 9:12], p["shN"][:, :, 0])
    np.testing.assert_array_equal(rec[:, 24:27], p["shN"][:, :, 1])
    np.testing.assert_array_equal(rec[:, 39:42], p["shN"][:, :, 2])
    assert (rec[:, 12:24] == 0).all()
    np.testing.assert_array_equal(rec[:, 54], p["opacities"])
    np.testing.assert_array_equal(rec[:, 55:58], p["scales"])
    np.testing.assert_array_equal(rec[:, 58:62], p["quats"])
    # read back by the reader: 16 coefficients, the upper bands zero
    d = read_gaussian_ply(str(path))
    assert d["sh"].shape == (60, 16, 3) and (d["sh"][:, 4:] == 0).all()


def test_foreign_ply_with_other_order_and_degree_loads(tmp_path):
    # a degree-0 file (no f_rest), double precision, properties in another order, an extra property
    n = 5
    rng = np.random.default_rng(0)
    cols = {k: rng.normal(size=n) for k in ["rot_0", "rot_1", "rot_2", "rot_3", "x", "y", "z", "scale_0",
                                             "scale_1", "scale_2", "opacity", "f_dc_0", "f_dc_1", "f_dc_2",
                                             "confidence"]}
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 5\n" + "".join(
        f"property double {k}\n" for k in cols) + "end_header\n"
    rec = np.stack(list(cols.values()), -1).astype("<f8")
    (tmp_path / "f.ply").write_bytes(header.encode() + rec.tobytes())
    geo = geometry(init_type="ply", init_path=str(tmp_path / "f.ply"), sh_degree=2)
    np.testing.assert_allclose(geo.params["means"].detach().numpy(),
                               np.stack([cols["x"], cols["y"], cols["z"]], -1), rtol=1e-6)
    np.testing.assert_allclose(geo.params["sh0"][:, 0, 1].detach().numpy(), cols["f_dc_1"], rtol=1e-6)
    assert geo.params["shN"].shape == (5, 8, 3) and (geo.params["shN"] == 0).all()
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\n"
                                       b"property float x\nend_header\n" + b"\0" * 4)
    with pytest.raises(GaussianInitError, match="missing vertex properties y, z, f_dc_0"):
        geometry(init_type="ply", init_path=str(tmp_path / "bad.ply"))
    with pytest.raises(GaussianInitError, match=r"system.geometry.init_path='nope.ply' not found"):
        geometry(init_type="ply", init_path="nope.ply")


def test_rgb_mode_round_trips_through_the_dc_term(tmp_path):
    geo = geometry(color_mode="rgb")
    randomise(geo, 2)
    geo.save_ply(str(tmp_path / "c.ply"))
    back = geometry(color_mode="rgb", init_type="ply", init_path=str(tmp_path / "c.ply"))
    torch.testing.assert_close(torch.sigmoid(back.params["colors"]), torch.sigmoid(geo.params["colors"]),
                               atol=1e-6, rtol=1e-5)
    a, b = renderer(geo)(**eval_batch()), renderer(back)(**eval_batch())
    torch.testing.assert_close(a["comp_rgb"], b["comp_rgb"], atol=1e-5, rtol=0)


def test_random_init_ball_and_neighbour_scales():
    geo = geometry(init_num_points=500, init_radius=0.3, init_color=(0.2, 0.4, 0.6))
    m = geo.params["means"].detach()
    assert float(m.norm(dim=-1).max()) <= 0.3 + 1e-6 and float(m.norm(dim=-1).mean()) > 0.2  # uniform in volume
    s = torch.exp(geo.params["scales"].detach())
    torch.testing.assert_close(s[:, 0], s[:, 1])
    # mean distance to 3 neighbours of 500 points in a ball of 0.3: about 0.55 * (V / n)^(1/3)
    expected = 0.55 * (4 / 3 * math.pi * 0.3 ** 3 / 500) ** (1 / 3)
    assert 0.6 * expected < float(s.mean()) < 1.6 * expected
    rgb = geo.splat_args()["colors"][:, 0] * 0.28209479177387814 + 0.5
    torch.testing.assert_close(rgb, torch.tensor([0.2, 0.4, 0.6]).expand(500, 3))
    assert torch.equal(geometry(init_num_points=500).params["means"], geometry(init_num_points=500).params["means"])


def test_init_from_a_textured_mesh_samples_surface_colours(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    from PIL import Image

    # a unit quad in z=0, x in [0, 1], y in [0, 1], textured left half red, right half blue (u along x)
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float64)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = v[:, :2].copy()
    tex = np.zeros((8, 8, 3), dtype=np.uint8)
    tex[:, :4] = [255, 0, 0]
    tex[:, 4:] = [0, 0, 255]
    img = Image.fromarray(tex)
    mat = trimesh.visual.material.PBRMaterial(baseColorTexture=img)
    mesh = trimesh.Trimesh(v, f, visual=trimesh.visual.TextureVisuals(uv=uv, image=img, material=mat),
                           process=False)
    path = tmp_path / "stage1.glb"
    path.write_bytes(mesh.export(file_type="glb"))
    geo = geometry(init_type="mesh", init_path=str(path), init_num_points=400, sh_degree=0)
    m = geo.params["means"].detach()
    assert float(m[:, 2].abs().max()) < 1e-6 and float(m[:, :2].min()) >= 0 and float(m[:, :2].max()) <= 1
    rgb = (geo.params["sh0"][:, 0].detach() * 0.28209479177387814 + 0.5)
    left, right = m[:, 0] < 0.4, m[:, 0] > 0.6
    torch.testing.assert_close(rgb[left], torch.tensor([1.0, 0.0, 0.0]).expand(int(left.sum()), 3), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(rgb[right], torch.tensor([0.0, 0.0, 1.0]).expand(int(right.sum()), 3), atol=1e-5,
                               rtol=0)
    # vertex colours (PLY mesh) and a point cloud with colours
    vc = trimesh.Trimesh(v, f, vertex_colors=np.array([[0, 255, 0, 255]] * 4, dtype=np.uint8), process=False)
    (tmp_path / "vc.ply").write_bytes(vc.export(file_type="ply"))
    geo2 = geometry(init_type="mesh", init_path=str(tmp_path / "vc.ply"), sh_degree=0, init_num_points=50)
    torch.testing.assert_close(geo2.params["sh0"][:, 0].detach() * 0.28209479177387814 + 0.5,
                               torch.tensor([0.0, 1.0, 0.0]).expand(50, 3), atol=1e-5, rtol=0)
    from threestudio.utils.saving import write_ply_points

    write_ply_points(str(tmp_path / "pts.ply"), np.random.rand(30, 3), colors=np.full((30, 3), 0.5))
    geo3 = geometry(init_type="points", init_path=str(tmp_path / "pts.ply"))
    assert geo3.num_gaussians == 30


def test_loading_a_state_dict_resizes_the_gaussians():
    small, big = geometry(init_num_points=10), geometry(init_num_points=25)
    randomise(big)
    small.load_state_dict(big.state_dict())
    assert small.num_gaussians == 25
    for k in big.params:
        assert torch.equal(small.params[k], big.params[k])


def test_sh_degree_schedule_and_config_errors():
    geo = geometry(sh_degree=3, sh_degree_interval=100)
    assert geo.active_sh_degree == 0 and geo.splat_args()["colors"].shape[1] == 1
    geo.do_update_step(0, 250)
    assert geo.active_sh_degree == 2 and geo.splat_args()["colors"].shape[1] == 9
    geo.do_update_step(0, 10000)
    assert geo.active_sh_degree == 3
    with pytest.raises(ValueError, match="init_type='sphere'"):
        geometry(init_type="sphere")
    with pytest.raises(ValueError, match="sh_degree=4"):
        geometry(sh_degree=4)


def test_renderer_uses_intrinsics_principal_point_and_background_module():
    geo = geometry(init_num_points=1, init_radius=0.0, init_scale=0.05, init_opacity=0.9, sh_degree=0)
    bg = threestudio.find("solid-color")({"color": [0.0, 1.0, 0.0]})
    r = renderer(geo, background=bg)
    c2w = cam.look_at(torch.tensor([[0.0, -2.0, 0.0]]))
    # principal point moved to (4, 12): the gaussian at the origin lands there
    out = r(c2w=c2w, height=16, width=16, intrinsics=torch.tensor([[40.0, 40.0, 4.0, 12.0]]))
    peak = torch.nonzero(out["opacity"][0, ..., 0] == out["opacity"].max())[0].tolist()
    assert peak in ([11, 3], [11, 4], [12, 3], [12, 4])
    # no bg_color in the batch: the background module fills the empty pixels
    torch.testing.assert_close(out["comp_rgb"][0, 0, 15], torch.tensor([0.0, 1.0, 0.0]))
    # random-camera style (fovy) works too and gives the same image as the equivalent intrinsics
    fovy = 2 * torch.atan(torch.tensor([8.0 / 40.0]))
    a = r(c2w=c2w, height=16, width=16, fovy_rad=fovy)
    b = r(c2w=c2w, height=16, width=16, intrinsics=torch.tensor([[40.0, 40.0, 8.0, 8.0]]))
    torch.testing.assert_close(a["comp_rgb"], b["comp_rgb"])
    with pytest.raises(KeyError, match="needs 'intrinsics'"):
        r(c2w=c2w, height=16, width=16)

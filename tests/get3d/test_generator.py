"""The batched generator: one disjoint mesh for all samples renders each sample exactly as rendering it alone; the
empty-shape guard; FlexiCubes with the weight MLP; GET3D's cameras."""

import math

import torch

from .conftest import TINY_G, get3d

get3d()
from custom.get3d import cameras as C  # noqa: E402
from custom.get3d.generator import GET3DGenerator  # noqa: E402


def _sample_only(m, i):
    sel = m["vert_sample"] == i
    remap = torch.cumsum(sel.long(), 0) - 1
    return {"verts": m["verts"][sel], "faces": remap[m["faces"][m["face_sample"] == i]],
            "vert_sample": torch.zeros(int(sel.sum()), dtype=torch.long)}


def test_batched_render_equals_per_sample_render():
    torch.manual_seed(0)
    g = GET3DGenerator(dict(TINY_G, tet_res=24)).eval()
    az, po = C.sample_angles((3, 2), generator=torch.Generator().manual_seed(0))
    mvp = C.mvp_from_angles(az, po)
    out = g(torch.randn(3, 32), torch.randn(3, 32), mvp, resolution=40, normals=True)
    m = out["meshes"]
    assert set(m["vert_sample"].tolist()) == {0, 1, 2}
    assert (m["vert_sample"][m["faces"]] == m["face_sample"][:, None]).all()  # no face mixes samples
    for i in range(3):
        o = g.render(_sample_only(m, i), out["tex_planes"][i:i + 1], out["ws_tex"][i:i + 1], mvp[i:i + 1],
                     40, normals=True)
        for k in ("rgb", "mask", "mask_hard", "normal"):
            assert torch.allclose(o[k][0], out[k][i], atol=1e-5), (i, k)
    assert out["mask_hard"].sum() > 0 and (out["mask_hard"] < 1).any()


def test_empty_shape_gets_the_template_and_a_loss():
    torch.manual_seed(0)
    g = GET3DGenerator(dict(TINY_G, tet_res=12))
    with torch.no_grad():  # an all-outside SDF for every sample (demodulated weights: the bias dominates)
        g.synthesis.generator.mlp_synthesis_sdf.layers[1].bias.fill_(-1000.0)
    ws = g.map(torch.randn(2, 32), torch.randn(2, 32))
    s, _ = g.planes(*ws)
    sdf, pos, reg = g.grid_sdf(s, ws[1])
    assert (reg > 900).all()
    assert (sdf[:, g.center_index] > 0).all() and (sdf[:, g.boundary_mask] < 0).all()
    m = g.extract_meshes(s, ws[1])
    assert m["faces"].shape[0] > 0 and set(m["face_sample"].tolist()) == {0, 1}


def test_flexicubes_meshes_and_weight_gradient():
    torch.manual_seed(0)
    g = GET3DGenerator(dict(TINY_G, iso_surface="flexicubes"))
    mvp = C.mvp_from_angles(*C.sample_angles((2, 2), generator=torch.Generator().manual_seed(1)))
    out = g(torch.randn(2, 32), torch.randn(2, 32), mvp, resolution=32)
    assert set(out["meshes"]["face_sample"].tolist()) == {0, 1}
    out["mask"].sum().backward()
    assert g.synthesis.generator.mlp_synthesis_weight.layers[1].weight.grad.abs().sum() > 0


def test_get3d_cameras():
    az = torch.tensor([0.0, math.pi / 2])
    po = torch.tensor([math.pi / 2, math.pi / 4])
    p = C.camera_positions(az, po)
    assert torch.allclose(p.norm(dim=-1), torch.full((2,), 1.2))
    assert torch.allclose(p[0], torch.tensor([0.0, 0.0, -1.2]), atol=1e-6)  # theta' = -pi/2
    mvp = C.mvp_from_angles(az, po)
    origin = mvp @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert torch.allclose(origin[:, :2] / origin[:, 3:], torch.zeros(2, 2), atol=1e-6)  # looks at the origin
    top = mvp[1] @ torch.tensor([0.0, 0.3, 0.0, 1.0])
    assert top[1] / top[3] < 0  # +Y maps to NDC -y: row 0 of the image is the top (GET3D's y flip)
    a, pl = C.sample_angles((1000,), "shapenet_car", torch.Generator().manual_seed(0))
    assert a.min() >= 0 and a.max() < 2 * math.pi
    assert math.radians(60) - 1e-6 <= float(pl.min()) and float(pl.max()) <= math.radians(90) + 1e-6
    assert abs(C.DEFAULT_FOVY_DEG - 49.134) < 1e-2

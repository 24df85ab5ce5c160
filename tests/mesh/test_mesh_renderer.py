"""mesh-rasterizer: image orientation, camera vs ray batches, gradients to the DMTet parameters, empty meshes, and
a multiview reconstruction with DMTet through launch.py (the refine stage without a diffusion model)."""

import math
import os

import numpy as np
import pytest
import torch

import threestudio
from threestudio.ops import cameras as C

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
              "base_resolution": 4, "max_resolution": 32}


def scene(shape_init_params=0.5, color=(0.0, 0.0, 1.0), **geo):
    g = threestudio.find("tetrahedra-sdf-grid")({"isosurface_resolution": 32, "radius": 1.0, "shape_init": "sphere",
                                                 "shape_init_params": shape_init_params,
                                                 "pos_encoding_config": SMALL_GRID, **geo})
    mat = threestudio.find("no-material")({"color_activation": "sigmoid"})
    bg = threestudio.find("solid-color")({"color": list(color)})
    r = threestudio.find("mesh-rasterizer")({"backend": "torch"}, geometry=g, material=mat, background=bg)
    return g, r


def cams(elev, azim, dist, fovy=40.0):
    c2w = C.c2w_from_spherical(torch.tensor(elev), torch.tensor(azim), dist)
    proj = C.perspective_projection(torch.full((len(elev),), math.radians(fovy)), 1.0)
    return c2w, C.mvp_matrix(c2w, proj)


def test_camera_render_matches_geometry_and_orientation():
    g, r = scene()
    c2w, mvp = cams([0.0, 30.0], [0.0, 120.0], 2.5)
    with torch.no_grad():
        out = r(mvp_mtx=mvp, camera_positions=c2w[:, :3, 3], light_positions=c2w[:, :3, 3], height=48, width=48)
    for k in ("comp_rgb", "comp_rgb_fg", "comp_rgb_bg", "opacity", "comp_normal", "depth"):
        assert out[k].shape[:3] == (2, 48, 48), k
    assert out["mesh"].t_pos_idx.shape[0] > 0
    # coverage: a sphere of radius 0.5 seen from 2.5 with a 40 degree fov
    expect = math.pi * (math.tan(math.asin(0.5 / 2.5)) / math.tan(math.radians(20))) ** 2 / 4
    assert float(out["opacity"].mean()) == pytest.approx(expect, rel=0.05)
    assert float(out["depth"][0, 24, 24, 0]) == pytest.approx(2.0, abs=0.02)
    n = out["comp_normal"][0, 24, 24]
    assert float((n * c2w[0, :3, 3] / 2.5).sum()) > 0.95  # facing the camera (a coarse 16^3-cube sphere)
    assert torch.allclose(out["comp_rgb"][0, 0, 0], torch.tensor([0.0, 0.0, 1.0]))  # background corner
    # row 0 is the top: raise the sphere and it moves up in the image
    with torch.no_grad():
        g.deformation.zero_()
        g.sdf.copy_((g.grid_vertices - torch.tensor([0.0, 0.0, 0.3])).norm(dim=-1) - 0.3)
    with torch.no_grad():
        out = r(mvp_mtx=mvp[:1], camera_positions=c2w[:1, :3, 3], height=48, width=48)
    rows = torch.nonzero(out["opacity"][0, :, :, 0].sum(1) > 0).squeeze(1)
    assert float(rows.float().mean()) < 24 - 3


def test_ray_batches_agree_with_camera_batches_inside_the_silhouette():
    from threestudio.models.renderers.mesh_rasterizer import pixel_directions

    g, r = scene()
    c2w, mvp = cams([20.0], [45.0], 2.5)
    d = pixel_directions(mvp, 32, 32)
    o = c2w[:, None, None, :3, 3].expand_as(d)
    with torch.no_grad():
        cam = r(mvp_mtx=mvp, camera_positions=c2w[:, :3, 3], height=32, width=32)
        ray = r(rays_o=o, rays_d=d)
    assert ray["comp_rgb"].shape == (1, 32, 32, 3)
    hard = cam["opacity"][..., 0] > 0.999
    hit = ray["opacity"][..., 0] > 0
    assert float((hard & ~hit).sum()) == 0
    both = hard & hit
    assert torch.allclose(ray["depth"][both], cam["depth"][both], atol=1e-4)
    assert torch.allclose(ray["comp_rgb"][both], cam["comp_rgb"][both], atol=1e-4)


def test_gradients_reach_sdf_offsets_and_texture_and_silhouettes_move():
    g, r = scene()
    c2w, mvp = cams([10.0], [0.0], 2.5)
    r.train()
    out = r(mvp_mtx=mvp, camera_positions=c2w[:, :3, 3], height=32, width=32)
    (out["comp_rgb"].sum() + out["opacity"].sum()).backward()
    assert g.sdf.grad.abs().sum() > 0 and g.deformation.grad.abs().sum() > 0
    assert g.encoding.grid.table.grad.abs().sum() > 0
    # gradient descent on "more opacity" grows the sphere: the SDF near the surface decreases
    g.sdf.grad = None
    out = r(mvp_mtx=mvp, camera_positions=c2w[:, :3, 3], height=32, width=32)
    (-out["opacity"].sum()).backward()
    near = (g.sdf.detach().abs() < 0.1)
    assert float(g.sdf.grad[near].sum()) > 0


def test_empty_mesh_renders_the_background():
    g, r = scene(shape_init="none")
    c2w, mvp = cams([0.0], [0.0], 2.5)
    with torch.no_grad():
        out = r(mvp_mtx=mvp, camera_positions=c2w[:, :3, 3], height=16, width=16)
    assert float(out["opacity"].sum()) == 0
    assert torch.allclose(out["comp_rgb"], torch.tensor([0.0, 0.0, 1.0]).expand(1, 16, 16, 3))


def test_custom_mesh_texture_is_shaded_from_uvs(tmp_path):
    from PIL import Image

    trimesh = pytest.importorskip("trimesh")
    m = trimesh.Trimesh([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, :] = [255, 0, 0]  # top half of the image (v > 0.5): red
    img[1, :] = [0, 255, 0]
    m.visual = trimesh.visual.TextureVisuals(uv=[[0, 0], [1, 0], [1, 1], [0, 1]], image=Image.fromarray(img))
    m.export(tmp_path / "quad.glb")
    geo = threestudio.find("custom-mesh")({"mesh_path": str(tmp_path / "quad.glb"), "shape_init_params": None})
    mat = threestudio.find("no-material")({"color_activation": "sigmoid"})
    bg = threestudio.find("solid-color")({"color": [0.0, 0.0, 0.0]})
    r = threestudio.find("mesh-rasterizer")({}, geometry=geo, material=mat, background=bg)
    c2w = C.look_at(torch.tensor([[0.0, 0.0, 3.0]]), up=torch.tensor([0.0, 1.0, 0.0]))  # looking down -z, y up
    mvp = C.mvp_matrix(c2w, C.perspective_projection(torch.tensor([math.radians(40.0)]), 1.0))
    with torch.no_grad():
        out = r(mvp_mtx=mvp, height=32, width=32)
    rgb = out["comp_rgb"][0]
    assert rgb[8, 16, 0] > 0.9 and rgb[8, 16, 1] < 0.1  # the upper part of the image: red (v near 1)
    assert rgb[24, 16, 1] > 0.9 and rgb[24, 16, 0] < 0.1


RECON = """
extends: {base}
name: dmtet-recon
tag: test
data:
  dataroot: {scene}
  synthetic_scene: {{n_train: 6, n_test: 2, resolution: 32, seed: 0}}
  batch_size: 256
  background: white
  n_test_views: 2
system:
  geometry_type: tetrahedra-sdf-grid
  geometry:
    __replace__: true
    radius: 1.0
    isosurface_resolution: 16
    shape_init: sphere
    shape_init_params: 0.5
    pos_encoding_config: {{otype: HashGrid, n_levels: 4, log2_hashmap_size: 12, base_resolution: 4, max_resolution: 32}}
    mlp_network_config: {{otype: VanillaMLP, n_neurons: 16, n_hidden_layers: 1}}
  renderer_type: mesh-rasterizer
  renderer:
    __replace__: true
    backend: torch
  loss:
    lambda_rgb: 1.0
  turntable: {{n_views: 0}}
  export_after_train: true
  exporter_type: explicit-mesh-exporter
  exporter: {{texture_size: 32, xatlas_subprocess: false}}
trainer:
  max_steps: 4
  val_check_interval: 4
  enable_progress_bar: false
"""


def test_multiview_reconstruction_with_dmtet_trains_tests_and_exports(tmp_path):
    from threestudio.launcher import main

    recipe = tmp_path / "recipe.yaml"
    from threestudio.data.synthetic_scene import make_scene

    make_scene(str(tmp_path / "scene"), n_train=6, n_test=2, resolution=32, seed=0, progress=False)
    recipe.write_text(RECON.format(base=os.path.join(REPO, "configs", "base", "nerf-reconstruction.yaml"),
                                   scene=tmp_path / "scene"))
    assert main(["--config", str(recipe), "--train", f"exp_root_dir={tmp_path / 'out'}"]) == 0
    (trial,) = (tmp_path / "out" / "dmtet-recon").iterdir()
    import json

    metrics = json.loads((trial / "save" / "metrics.json").read_text())
    assert metrics["test/n_views"] == 2 and math.isfinite(metrics["test/psnr"])
    trimesh = pytest.importorskip("trimesh")
    mesh = trimesh.load(trial / "save" / "it4-export" / "model.glb", force="mesh")
    assert len(mesh.faces) > 50
    sd = torch.load(trial / "ckpts" / "last.ckpt", weights_only=False)["state_dict"]
    assert sd["geometry.sdf"].shape == (9**3,)


@pytest.mark.gpu
def test_renderer_on_cuda_triton_matches_torch():
    g, r = scene(shape_init_params=0.6, isosurface_resolution=64)
    g, r = g.cuda(), r.cuda()
    r.material.cuda(), r.background.cuda()  # owned by the system in a run; the renderer only refers to them
    c2w, mvp = cams([15.0, -5.0], [10.0, 200.0], 2.2)
    res = {}
    for be in ("torch", "triton"):
        r.cfg.backend = be
        g.zero_grad()
        out = r(mvp_mtx=mvp.cuda(), camera_positions=c2w[:, :3, 3].cuda(), height=256, width=256)
        (out["comp_rgb"].sum() + out["opacity"].sum() + out["depth"].sum()).backward()
        res[be] = ({k: out[k].detach() for k in ("comp_rgb", "opacity", "depth")}, g.sdf.grad.clone())
    (a, ga), (b, gb) = res["torch"], res["triton"]
    for k in a:
        assert float((a[k] - b[k]).abs().gt(1e-3).float().mean()) < 1e-3, k
    assert float((ga - gb).norm() / ga.norm()) < 1e-2

"""The tiny recipe end to end on the CPU through launch.py: official-layout checkpoint -> NADA training (both phases)
-> test pass (side-by-side turntable, interpolation video, metrics.json) -> export of a textured GLB + OBJ that load
back with their texture. And every shipped recipe loads and builds."""

import glob
import json
import os

import numpy as np
import pytest
import torch

from .conftest import REPO, TINY_G, get3d

get3d()
from custom.get3d.generator import GET3DGenerator  # noqa: E402

RECIPES = os.path.join(REPO, "custom", "get3d", "configs")


def _tiny_official(path):
    torch.manual_seed(0)
    gen = GET3DGenerator(dict(TINY_G, img_resolution=64))
    sd = gen.state_dict()
    torch.save({"G": sd, "G_ema": sd}, path)
    return gen


def test_tiny_recipe_trains_tests_and_exports(tmp_path, tiny_clip, monkeypatch):
    from threestudio.launcher import TIMESTAMP_ENV, main

    monkeypatch.delenv(TIMESTAMP_ENV, raising=False)  # restored afterwards: the launcher sets it

    ckpt = str(tmp_path / "tiny_official.pt")
    pre = _tiny_official(ckpt)
    args = [f"system.checkpoint={ckpt}", f"system.clip_models=[{tiny_clip}]", f"exp_root_dir={tmp_path / 'exp'}"]
    assert main(["--config", os.path.join(RECIPES, "tiny-cpu.yaml"), "--train", *args]) == 0
    trial = glob.glob(str(tmp_path / "exp" / "*" / "*"))[0]
    last = os.path.join(trial, "ckpts", "last.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3  # phase 1: ceil(4 / 2) = 2 steps, phase 2: ceil(2 / 2) x 1 = 1 step
    sd = state["state_dict"]
    moved = [k for k, v in pre.state_dict().items() if k.startswith("synthesis.generator")
             and not torch.equal(sd["generator." + k], v)]
    assert moved  # the trainable copy was adapted
    for k, v in pre.state_dict().items():
        assert torch.equal(sd["generator_frozen." + k], v)  # the frozen copy was not
    save = os.path.join(trial, "save")
    metrics = json.load(open(os.path.join(save, "metrics.json")))
    assert metrics["target_text"] == "police car" and metrics["n_samples"] == 2
    assert -1 <= metrics["clip_target_similarity_adapted"] <= 1
    assert os.path.getsize(os.path.join(save, "it3-test.mp4")) > 0
    assert os.path.getsize(os.path.join(save, "it3-interp.mp4")) > 0
    from PIL import Image

    frame = np.asarray(Image.open(os.path.join(save, "it3-test", "frame0.png")))
    assert frame.shape[:2] == (2 * 48, 2 * 48)  # frozen row over adapted row, 2 latents side by side

    assert main(["--config", os.path.join(RECIPES, "tiny-cpu.yaml"), "--export", "--resume", last, *args]) == 0
    import trimesh

    glb = os.path.join(save, "it3-export", "sample_0.glb")
    mesh = trimesh.load(glb, force="mesh")
    assert len(mesh.faces) > 0
    tex = mesh.visual.material.baseColorTexture
    assert tex is not None and tex.size == (64, 64)
    assert np.asarray(tex).std() > 0  # a baked texture, not a flat colour
    assert mesh.visual.uv.shape == (len(mesh.vertices), 2)
    obj = os.path.join(save, "it3-export", "sample_0.obj")
    assert "mtllib sample_0.mtl" in open(obj).read()
    assert os.path.isfile(os.path.join(save, "it3-export", "sample_0_texture_kd.png"))
    from custom.get3d.checkpoint import load_generator

    adapted = load_generator(os.path.join(save, "it3-export", "generator_adapted.pt"))
    assert torch.equal(adapted.state_dict()[moved[0]], sd["generator." + moved[0]])


@pytest.mark.parametrize("name", ["car-police", "car-sketch", "motorbike-tiger", "shoes-mossy"])
def test_recipes_load_and_build(name, tmp_path):
    import threestudio
    from threestudio.utils.config import ConfigError, load_config

    path = os.path.join(RECIPES, f"{name}.yaml")
    with pytest.raises(ConfigError, match="system.checkpoint"):
        load_config(path, cli_args=[f"exp_root_dir={tmp_path}"])
    cfg = load_config(path, cli_args=[f"exp_root_dir={tmp_path}", "system.checkpoint=shapenet.pt",
                                      "system.generator.tet_res=8"])
    s = cfg.system
    for key in ("source_text", "target_text", "lr", "auto_layer_k", "batch", "iter_1st", "iter_2nd", "n_views",
                "gradient_clip_threshold"):
        assert key in s
    dm = threestudio.find(cfg.data_type, "data")(cfg.data)
    system = threestudio.find(cfg.system_type, "system")(cfg.system)
    assert dm.cfg.n_views == s.n_views and dm.cfg.batch == s.batch == 3
    assert cfg.trainer.max_steps == system.total_steps() == 167 + s.iter_2nd * 17
    n_params = sum(p.numel() for p in system.generator.parameters())
    assert 34.2e6 < n_params < 34.4e6  # the official generator's size

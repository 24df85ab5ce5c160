"""The Zero-1-to-G end-to-end demo: the identity "VAE" of make_demo_models.py, eval_demo.py's PSNR and
mean-shape baseline on hand-made cases, and scripts/bench/gpu_zero1tog_demo.sh --smoke end to end on the CPU
(procedural meshes -> GT data -> stage 1 -> stage 2 -> eval JSON)."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.zero1tog.conftest import REPO, load_ext

load_ext()
from custom.zero1tog.splatter import (attribute_images_to_splatter,  # noqa: E402
                                      splatter_to_attribute_images)

SCRIPTS = os.path.join(REPO, "custom", "zero1tog", "scripts")


def _script(name):
    spec = importlib.util.spec_from_file_location(f"z1g_{name}", os.path.join(SCRIPTS, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ev = _script("eval_demo")
mdm = _script("make_demo_models")


def test_identity_vae_round_trip_and_latents():
    vae = mdm.identity_vae(scaling_factor=1.0, sample_size=16)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    x[0] = 0.0  # a constant image: the GroupNorm statistics must not depend on it
    x[1] = 1.0
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        z = post.sample(generator=torch.Generator().manual_seed(0))
        y = vae.decode(z).sample
    assert z.shape == (4, 4, 16, 16)
    assert (z[:, :3] - x).abs().max() < 1e-4 and z[:, 3].abs().max() < 1e-4
    assert (y - x).abs().max() < 3e-4  # relative error <= 1 / K^2 per encode + decode
    assert post.std.max() < 1e-6
    mdm.check_identity_vae(vae)
    with torch.no_grad():  # a broken weight is caught by the check
        vae.decoder.conv_out.weight[0, 0, 1, 1] *= 1.1
    with pytest.raises(RuntimeError, match="identity VAE"):
        mdm.check_identity_vae(vae)


def test_psnr_hand_computed():
    a = torch.zeros(3, 4, 4)
    b = torch.full((3, 4, 4), 0.1)
    assert ev.psnr(a, b) == pytest.approx(20.0)
    assert ev.views_psnr(torch.stack([a, a]), torch.stack([b, torch.full_like(b, 0.01)])) == pytest.approx(30.0)


def _objects(n=3, res=8, seed=0):
    """Hand-made objects: random splatters (as attribute images), their own renders as the held-out 'GT'."""
    from custom.zero1tog.views import object_cameras

    g = torch.Generator().manual_seed(seed)
    objs, atts = [], []
    for i in range(n):
        att = (torch.rand(5, 6, 3, res, res, generator=g) * 1.6 - 0.8)
        att[1] = 0.6  # opacity ~0.8
        att[2] = -0.6  # small scales
        atts.append(att)
        cams = object_cameras("wonder3d", 15.0, 0.0, 1.5, 0, 2, (0.0, 40.0), torch.Generator().manual_seed(i))
        sp = attribute_images_to_splatter(att, "wonder3d")
        fovy = math.radians(cams.fovy_deg)
        gt = ev.render_views(sp, cams.c2w["heldout"], fovy, 16, 16, backend="torch")
        objs.append({"name": f"o{i}", "heldout_rgb": gt, "heldout_c2w": cams.c2w["heldout"], "fovy": fovy,
                     "splatter": sp})
    return objs, atts


def test_model_equal_to_the_mean_splatter_scores_the_baseline():
    objs, atts = _objects()
    mean = ev.mean_splatter(atts[:2], "wonder3d")
    # the baseline is the mapping of the mean attribute images (not the mean of the activated splatters)
    want = attribute_images_to_splatter(torch.stack(atts[:2]).mean(0), "wonder3d")
    assert torch.allclose(mean, want)
    assert torch.allclose(splatter_to_attribute_images(mean, "wonder3d")[4], (atts[0][4] + atts[1][4]) / 2, atol=1e-5)
    gens = {"model": lambda o: mean.clone(), "baseline": lambda o: mean, "gt_fit": lambda o: o["splatter"],
            "other": lambda o: objs[0]["splatter"]}
    res = ev.evaluate(objs, gens, backend="torch", log=lambda s: None)
    m = res["mean"]
    assert m["model"] == pytest.approx(m["baseline"], abs=1e-9)
    for r in res["per_object"]:
        assert r["model"] == pytest.approx(r["baseline"], abs=1e-9)
    assert m["gt_fit"] > 60  # the GT is the splatter's own render
    assert res["per_object"][0]["other"] > 60 and res["per_object"][1]["other"] < 40
    assert m["baseline"] < 40 and m["baseline"] == pytest.approx(
        sum(ev.views_psnr(ev.render_views(mean, o["heldout_c2w"], o["fovy"], 16, 16, backend="torch"),
                          o["heldout_rgb"]) for o in objs) / len(objs))


@pytest.mark.slow
def test_smoke_mode_end_to_end(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run(["bash", os.path.join(REPO, "scripts", "bench", "gpu_zero1tog_demo.sh"), "--smoke"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = tmp_path / "out"
    with open(out / "eval_demo.json") as f:
        res = json.load(f)
    for k in ("model_psnr", "baseline_psnr", "gt_fit_psnr", "margin_db", "beats_baseline", "per_object",
              "n_heldout_objects", "n_train_objects", "n_views_per_object", "global_step", "stage"):
        assert k in res, k
    assert res["stage"] == "joint" and res["global_step"] == 2
    assert res["n_heldout_objects"] == 2 and res["n_train_objects"] == 4 and res["n_views_per_object"] == 2
    assert res["margin_db"] == pytest.approx(res["model_psnr"] - res["baseline_psnr"])
    assert res["beats_baseline"] == (res["margin_db"] > 0)
    for k in ("model_psnr", "baseline_psnr", "gt_fit_psnr"):
        assert 3.0 < res[k] < 60.0, (k, res[k])
    names = [r["name"] for r in res["per_object"]]
    data = out / "z1g_smoke" / "data"
    assert names == sorted(d for d in os.listdir(data) if (data / d / "complete.json").exists())[-2:]
    assert (out / "eval_grid.png").stat().st_size > 0
    # the held-out objects were never in stage 1 / stage 2 batches: the data module's train split excludes them
    assert "stage2" in (out / "timings_all.txt").read_text()


@pytest.mark.slow
def test_smoke_train_then_eval_runs_stage_two_once(tmp_path):
    """The two-call split: ``train`` makes the data and stage 1 only, ``eval`` runs stage 2 and then evaluates, and a
    second ``eval`` evaluates the same stage-2 trial without training again."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    script = os.path.join(REPO, "scripts", "bench", "gpu_zero1tog_demo.sh")
    out = tmp_path / "out"
    stamps = {}
    for mode in ("train", "eval", "eval"):
        p = subprocess.run(["bash", script, "--smoke", mode], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, (mode, p.stdout[-3000:] + p.stderr[-3000:])
        lines = (out / f"timings_{mode}.txt").read_text().split("\n")
        stamps.setdefault(mode, []).append([ln.split()[0] for ln in lines if ln.strip()])
    assert stamps["train"][0] == ["meshes_and_models", "gt_data", "stage1"]
    assert stamps["eval"][0] == stamps["train"][0] + ["stage2", "eval"]
    assert stamps["eval"][1] == stamps["eval"][0] + ["eval"]  # no second stage 2
    runs = out / "z1g_smoke" / "runs"
    assert len(os.listdir(runs / "zero1tog-demo-mix")) == 1 and len(os.listdir(runs / "zero1tog-demo-joint")) == 1
    with open(out / "eval_demo.json") as f:
        res = json.load(f)
    assert res["stage"] == "joint" and res["global_step"] == 2

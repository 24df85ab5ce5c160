"""Zero-1-to-G inference through launch.py (zero1tog-system's test pass with ``system.image``, the zero1tog-image data
module, configs/image-to-gaussians*.yaml) with tiny random models on the CPU: the outputs land in the new trial's
save/ folder and equal the stand-alone pipeline's, the PLY loads back into our gaussian geometry, the input folder is
untouched, a trained trial's EMA UNet samples without its training data, and the config errors name what is wrong."""

import glob
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch

import threestudio
from tests.zero1tog.conftest import REPO, load_ext

load_ext()
from custom.zero1tog import inference as I  # noqa: E402
from tests.zero1tog.test_inference import rgba_disc, save_png, snapshot  # noqa: E402
from tests.zero1tog import test_system as _sys  # noqa: E402

tiny_models, tiny_data = _sys.tiny_models, _sys.tiny_data  # the tiny model folder and data set (fixtures)

CONFIGS = os.path.join(REPO, "custom", "zero1tog", "configs")
TINY = os.path.join(CONFIGS, "image-to-gaussians-tiny-cpu.yaml")
TRAIN_TINY = os.path.join(CONFIGS, "tiny-cpu.yaml")
OUTPUTS = {"gaussians.ply", "attributes.png", "input.png", "splatter.pt", "timing.json"}


@pytest.fixture
def env(monkeypatch):
    from threestudio.launcher import TIMESTAMP_ENV

    monkeypatch.delenv(TIMESTAMP_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture
def photo_dir(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    save_png(d / "object.png", rgba_disc())
    save_png(d / "other.png", rgba_disc(centre=(20, 20), radius=6))
    return d


def _main(args):
    from threestudio.launcher import main

    return main([str(a) for a in args])


def _trials(root):
    return sorted(glob.glob(os.path.join(str(root), "*", "*")))


def _reference(models, photo, unet=None):
    """The stand-alone pipeline (inference.py) with the tiny recipe's settings, seed 0."""
    pipe = I.Zero1toGPipeline.from_pretrained(models, cfg=I.InferenceConfig(num_inference_steps=3, guidance_scale=3.0))
    if unet is not None:
        pipe.unet.load_state_dict(unet)
    return pipe(I.prepare_input(photo, 48)[None], torch.Generator().manual_seed(0))["splatter"][0]


def _check_ply(save, n):
    geo = threestudio.find("gaussian-splatting")({"init_type": "ply", "init_path": os.path.join(save, "gaussians.ply"),
                                                   "sh_degree": 0, "color_mode": "rgb"})
    assert geo.num_gaussians == n


def test_test_pass_writes_the_outputs_into_the_trial_save_folder(tiny_models, photo_dir, tmp_path, env):
    photo = photo_dir / "object.png"
    before = snapshot(photo_dir)
    listing = sorted(os.listdir(photo_dir))
    rc = _main(["--config", TINY, "--test", f"system.image={photo}",
                f"system.pretrained_model_name_or_path={tiny_models}", f"exp_root_dir={tmp_path / 'out'}"])
    assert rc == 0
    (trial,) = _trials(tmp_path / "out")
    assert os.path.basename(os.path.dirname(trial)) == "zero1tog-image-to-gaussians-tiny"
    save = os.path.join(trial, "save")
    names = set(os.listdir(save))
    assert OUTPUTS <= names and names & {"turntable.mp4", "turntable.gif"}, names
    assert not any(n.endswith(".tmp") for n in names)
    # the input image's folder: same files, same bytes (and not touched)
    assert sorted(os.listdir(photo_dir)) == listing and snapshot(photo_dir) == before

    splatter = torch.load(os.path.join(save, "splatter.pt"))
    assert splatter.shape == (6, 14, 32, 32)
    _check_ply(save, 6 * 32 * 32)
    # what inference.py makes of the same image with the same weights, settings and seed
    assert torch.allclose(splatter, _reference(tiny_models, str(photo)), atol=1e-5)

    timing = json.loads(open(os.path.join(save, "timing.json")).read())
    assert timing["seconds_per_object"] > 0 and timing["num_gaussians"] == 6 * 32 * 32
    assert timing["config"]["num_inference_steps"] == 3 and timing["config"]["guidance_scale"] == 3.0
    assert timing["unet_weights"] == "ema" and timing["image"] == str(photo)
    from PIL import Image

    assert np.asarray(Image.open(os.path.join(save, "input.png"))).shape == (48, 48, 3)
    assert np.asarray(Image.open(os.path.join(save, "attributes.png"))).shape == (5 * 34 - 2, 6 * 34 - 2, 3)

    # another seed: other gaussians
    rc = _main(["--config", TINY, "--test", f"system.image={photo}", "system.seed=1",
                f"system.pretrained_model_name_or_path={tiny_models}", f"exp_root_dir={tmp_path / 'out2'}"])
    assert rc == 0
    (trial2,) = _trials(tmp_path / "out2")
    assert not torch.allclose(torch.load(os.path.join(trial2, "save", "splatter.pt")), splatter, atol=1e-3)


def _errors(caplog):
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_missing_image_key_is_a_config_error(tiny_models, tmp_path, env, caplog):
    with caplog.at_level(logging.ERROR):
        rc = _main(["--config", TINY, "--test", f"system.pretrained_model_name_or_path={tiny_models}",
                    f"exp_root_dir={tmp_path / 'out'}"])
    assert rc == 2
    msg = _errors(caplog)
    assert "system.image" in msg and "mandatory value '???' was not set" in msg, msg
    assert _trials(tmp_path / "out") == []


def test_missing_image_file_names_the_path(tiny_models, photo_dir, tmp_path, env, caplog):
    missing = photo_dir / "nope.png"
    before = snapshot(photo_dir)
    with caplog.at_level(logging.ERROR):
        rc = _main(["--config", TINY, "--test", f"system.image={missing}",
                    f"system.pretrained_model_name_or_path={tiny_models}", f"exp_root_dir={tmp_path / 'out'}"])
    assert rc == 2
    msg = _errors(caplog)
    assert "system.image" in msg and f"no image file {missing}" in msg, msg
    assert _trials(tmp_path / "out") == [] and snapshot(photo_dir) == before


def test_image_without_alpha_and_without_rembg_is_a_config_error(tiny_models, tmp_path, env, caplog, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "rembg", None)
    photo = save_png(tmp_path / "photo.png", rgba_disc()[..., :3].copy())
    with caplog.at_level(logging.ERROR):
        rc = _main(["--config", TINY, "--test", f"system.image={photo}",
                    f"system.pretrained_model_name_or_path={tiny_models}", f"exp_root_dir={tmp_path / 'out'}"])
    assert rc == 2
    msg = _errors(caplog)
    assert "system.image" in msg and "pip install rembg" in msg, msg


@pytest.mark.slow
def test_resumed_trial_samples_with_its_ema_unet_without_its_data(tiny_models, tiny_data, photo_dir, tmp_path, env):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    rc = _main(["--config", TRAIN_TINY, "--train", f"data.dataroot={data}", "system.stage=joint",
                "trainer.max_steps=2", f"system.pretrained_model_name_or_path={tiny_models}",
                f"exp_root_dir={tmp_path / 'train'}"])
    assert rc == 0
    (trial,) = _trials(tmp_path / "train")
    shutil.rmtree(data)  # a test-only run reads no training data
    photo = photo_dir / "object.png"
    before = snapshot(photo_dir)
    ckpt_before = snapshot(os.path.join(trial, "ckpts"))
    rc = _main(["--config", TINY, "--test", "--resume", trial, f"system.image={photo}",
                f"system.pretrained_model_name_or_path={tiny_models}"])
    assert rc == 0
    save = os.path.join(trial, "save")
    assert OUTPUTS <= set(os.listdir(save))
    assert snapshot(photo_dir) == before and snapshot(os.path.join(trial, "ckpts")) == ckpt_before
    _check_ply(save, 6 * 32 * 32)
    got = torch.load(os.path.join(save, "splatter.pt"))
    sd = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)["state_dict"]
    ema = {k[len("unet_ema."):]: v for k, v in sd.items() if k.startswith("unet_ema.")}
    raw = {k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")}
    assert torch.allclose(got, _reference(tiny_models, str(photo), ema), atol=1e-5)  # the EMA weights sample
    assert not torch.allclose(got, _reference(tiny_models, str(photo), raw), atol=1e-4)
    assert not torch.allclose(got, _reference(tiny_models, str(photo)), atol=1e-4)  # not the untrained UNet
    timing = json.loads(open(os.path.join(save, "timing.json")).read())
    assert timing["unet_weights"] == "ema" and timing["global_step"] == 2

"""Instruct-NeRF2NeRF end to end on the CPU through launch.py: a tiny capture NeRF (nerf-capture recipe, a few steps)
-> the in2n recipe with a tiny random InstructPix2Pix. Which views are edited at which steps (cycling in index
order), that every edit is conditioned on the ORIGINAL photo, that the edits replace the training images and are
saved, and that a run stopped and resumed with --resume keeps the edited set and continues the cycle exactly as a
run that never stopped."""

import csv
import glob
import os

import numpy as np
import pytest
import torch

from tests.data.test_data_safety import snapshot

from .conftest import REPO

IN2N = os.path.join(REPO, "custom", "mobilegen3d", "configs", "in2n.yaml")
NERF = os.path.join(REPO, "configs", "nerf-capture.yaml")
SMALL = ["data.batch_size=256", "system.geometry.pos_encoding_config.n_levels=4",
         "system.geometry.pos_encoding_config.log2_hashmap_size=12",
         "system.geometry.pos_encoding_config.max_resolution=64", "system.renderer.num_proposal_samples=[32,16]",
         "system.renderer.num_samples=8", "trainer.enable_progress_bar=false"]


def _main(args, monkeypatch):
    from threestudio.launcher import TIMESTAMP_ENV, main

    monkeypatch.delenv(TIMESTAMP_ENV, raising=False)
    rc = main(args)
    monkeypatch.delenv(TIMESTAMP_ENV, raising=False)
    return rc


@pytest.fixture(scope="module")
def recon(tmp_path_factory, mg):
    """A synthetic capture (3 training photos of 24^2) and a 4-step nerf-capture trial of it."""
    from threestudio.data.synthetic_scene import make_scene

    root = tmp_path_factory.mktemp("in2n")
    scene = str(root / "scene")
    make_scene(scene, n_train=3, n_test=1, resolution=24, progress=False)
    mp = pytest.MonkeyPatch()
    mp.setenv("THREESTUDIO_CACHE", str(root / "cache"))
    try:
        assert _main(["--config", NERF, "--train", f"data.dataroot={scene}", *SMALL, "trainer.max_steps=4",
                      "trainer.val_check_interval=4", f"exp_root_dir={root / 'out'}"], mp) == 0
    finally:
        mp.undo()
    return {"root": root, "scene": scene, "out": str(root / "out"), "before": snapshot(scene)}


class Spy:
    """Records the edits (the photo each one was conditioned on) and the images the data module trains on."""

    def __init__(self, mg, monkeypatch):
        from threestudio.data.multiview import MultiviewDataModule

        self.edits, self.replaced = [], []
        edit, replace = mg.ip2p.InstructPix2PixGuidance.edit_image, MultiviewDataModule.replace_train_image
        spy = self

        def edit_image(guidance, render, original, *args, **kwargs):
            spy.edits.append({"render": render.detach().cpu().clone(), "original": original.detach().cpu().clone()})
            return edit(guidance, render, original, *args, **kwargs)

        def replace_train_image(dm, j, image):
            spy.replaced.append((int(dm.trainer.global_step), j, torch.as_tensor(image).clone()))
            return replace(dm, j, image)

        monkeypatch.setattr(mg.ip2p.InstructPix2PixGuidance, "edit_image", edit_image)
        monkeypatch.setattr(MultiviewDataModule, "replace_train_image", replace_train_image)


def _in2n(recon, tiny_ip2p, out, steps, extra=()):
    return ["--config", IN2N, "--train", f"data.dataroot={recon['scene']}", *SMALL, f"trainer.max_steps={steps}",
            "trainer.val_check_interval=4", f"exp_root_dir={out}", f"system.source={recon['out']}/nerf-capture/"
            + os.path.basename(glob.glob(os.path.join(recon["out"], "nerf-capture", "*"))[0]),
            "system.prompt=turn it into gold", f"system.guidance.pretrained_model_name_or_path={tiny_ip2p}",
            "system.edit_rate=2", "system.diffusion_steps=3", "system.scheduler.args.gamma=0.99", *extra]


def _edits_csv(trial):
    with open(os.path.join(trial, "save", "edits", "edits.csv")) as f:
        return [(int(r["step"]), int(r["view"]), int(r["T"])) for r in csv.DictReader(f)]


def _png(trial, j):
    from PIL import Image

    return np.asarray(Image.open(os.path.join(trial, "save", "edits", f"{j}.png")))


def _photos(scene, background="white"):
    """The training photos as loaded, composited on the evaluation background."""
    import threestudio

    dm = threestudio.find("multiview", "data")({"dataroot": scene, "recenter": "cameras", "orient": "up",
                                               "camera_extent": True, "background": background})
    dm.setup("fit")
    return [v["rgb"] for v in dm.train_views()]


@pytest.fixture(scope="module")
def uninterrupted(recon, tiny_ip2p, mg):
    """An 8-step in2n run: edits at steps 0, 2, 4, 6 of views 0, 1, 2, 0."""
    mp = pytest.MonkeyPatch()
    mp.setenv("THREESTUDIO_CACHE", str(recon["root"] / "cache"))
    spy = Spy(mg, mp)
    out = str(recon["root"] / "full")
    try:
        assert _main(_in2n(recon, tiny_ip2p, out, 8), mp) == 0
    finally:
        mp.undo()
    (trial,) = glob.glob(os.path.join(out, "in2n", "*"))
    return {"trial": trial, "spy": spy}


@pytest.mark.slow
def test_in2n_edits_views_in_cycles_from_the_original_photos(recon, uninterrupted):
    trial, spy = uninterrupted["trial"], uninterrupted["spy"]
    rows = _edits_csv(trial)
    assert [(s, j) for s, j, _ in rows] == [(0, 0), (2, 1), (4, 2), (6, 0)]
    assert all(20 <= t <= 980 for _, _, t in rows)
    # every edit was conditioned on the photo as loaded, also the second edit of view 0 (not its first edit)
    photos = _photos(recon["scene"])
    assert len(spy.edits) == 4
    for (_, j, _), call in zip(rows, spy.edits):
        assert torch.allclose(call["original"][0], photos[j], atol=1e-3)
        assert call["render"].shape == (1, 24, 24, 3)
    first_edit_of_0 = spy.replaced[0][2]
    assert (first_edit_of_0 - photos[0]).abs().max() > 0.05
    # the edits replaced the training images at the edit steps, and are saved as they are trained on
    assert [(s, j) for s, j, _ in spy.replaced] == [(0, 0), (2, 1), (4, 2), (6, 0)]
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    state = ckpt["in2n_state"]
    assert state["edit_counter"] == 4 and sorted(state["edited"]) == [0, 1, 2]
    assert [tuple(h) for h in state["history"]] == rows
    for j, step in ((0, 6), (1, 2), (2, 4)):
        png = _png(trial, j)
        assert png.shape == (24, 24, 3) and np.array_equal(png, state["edited"][j].numpy())
        trained = [img for s, v, img in spy.replaced if v == j and s == step][0]
        assert torch.equal((trained * 255).round().to(torch.uint8), state["edited"][j])
    assert not np.array_equal(_png(trial, 0), (first_edit_of_0 * 255).round().to(torch.uint8).numpy())
    # the edited scene's test pass, and the capture folder untouched
    assert os.path.getsize(os.path.join(trial, "save", "it8-test.mp4")) > 0
    assert snapshot(recon["scene"]) == recon["before"]


@pytest.mark.slow
def test_in2n_resume_keeps_the_edited_set_and_continues_the_cycle(recon, uninterrupted, tiny_ip2p, mg, monkeypatch):
    import signal

    from threestudio.data.multiview import MultiviewDataModule

    monkeypatch.setenv("THREESTUDIO_CACHE", str(recon["root"] / "cache"))
    replace = MultiviewDataModule.replace_train_image

    def interrupt_at_step_4(dm, j, image):  # Ctrl-C while step 4 edits view 2
        replace(dm, j, image)
        if dm.trainer.global_step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as m:
        m.setattr(MultiviewDataModule, "replace_train_image", interrupt_at_step_4)
        out = str(recon["root"] / "stopped")
        assert _main(_in2n(recon, tiny_ip2p, out, 8), monkeypatch) == 130  # step 4 finished, last.ckpt saved
    (trial,) = glob.glob(os.path.join(out, "in2n", "*"))
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 5 and sorted(ckpt["in2n_state"]["edited"]) == [0, 1, 2]
    assert [(s, j) for s, j, _ in _edits_csv(trial)] == [(0, 0), (2, 1), (4, 2)]
    saved = {j: ckpt["in2n_state"]["edited"][j].clone() for j in (1, 2)}
    with open(os.path.join(trial, "save", "edits", "1.png"), "wb") as f:  # as if a later, unsaved edit wrote it
        f.write(b"an edit made after the checkpoint")

    spy = Spy(mg, monkeypatch)
    assert _main(["--train", "--resume", trial], monkeypatch) == 0
    # the checkpoint's edited set came back before the first resumed step, then the cycle went on with view 0
    assert [j for _, j, _ in spy.replaced] == [0, 1, 2, 0] and spy.replaced[3][0] == 6
    for k, j in ((1, 1), (2, 2)):
        assert torch.equal((spy.replaced[k][2] * 255).round().to(torch.uint8), saved[j])
    full = uninterrupted["trial"]
    assert _edits_csv(trial) == _edits_csv(full)  # same steps, views and starting timesteps
    for j in (0, 1, 2):  # save/edits follows the checkpoint again (1.png rewritten) and matches the full run
        assert np.array_equal(_png(trial, j), _png(full, j))
    a = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    b = torch.load(os.path.join(full, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 8
    for j in (0, 1, 2):
        assert torch.equal(a["in2n_state"]["edited"][j], b["in2n_state"]["edited"][j])
    for k, v in b["state_dict"].items():
        assert torch.allclose(a["state_dict"][k], v, atol=1e-6), k


@pytest.mark.slow
def test_in2n_stops_before_training_without_weights_or_source(recon, tiny_ip2p, tmp_path, monkeypatch):
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("threestudio").addHandler(handler)
    monkeypatch.setenv("THREESTUDIO_CACHE", str(recon["root"] / "cache"))
    missing = str(tmp_path / "no-ip2p")
    try:
        rc = _main(_in2n(recon, missing, str(tmp_path / "a"), 4), monkeypatch)
        rc2 = _main(_in2n(recon, tiny_ip2p, str(tmp_path / "b"), 4, [f"system.source=LAST:{tmp_path}/none"]),
                    monkeypatch)
    finally:
        logging.getLogger("threestudio").removeHandler(handler)
    errors = "\n".join(r.getMessage() for r in records if r.levelno >= logging.ERROR)
    assert rc == 2 and rc2 == 2
    assert "Pretrained weights not available" in errors and missing in errors
    assert "huggingface-cli download timbrooks/instruct-pix2pix" in errors
    assert "system.source" in errors and "no finished reconstruction of" in errors
    for sub in ("a", "b"):  # nothing left behind
        exp = tmp_path / sub / "in2n"
        assert not exp.exists() or list(exp.iterdir()) == []


@pytest.mark.slow
def test_in2n_gaussians_starts_from_the_newest_matching_trial_and_exports(recon, tiny_ip2p, mg, monkeypatch):
    """gaussian-capture -> in2n-gaussians with the recipe's default source (LAST: the newest gaussian-capture trial
    of this data): the trained gaussians are loaded after the data module's scene initialisation (which would
    otherwise replace them), the views are edited in cycles, and the edited scene is exported."""
    monkeypatch.setenv("THREESTUDIO_CACHE", str(recon["root"] / "cache"))
    out = str(recon["root"] / "gs")
    common = [f"data.dataroot={recon['scene']}", "system.geometry.init_num_points=300", "trainer.val_check_interval=4",
              "trainer.enable_progress_bar=false", f"exp_root_dir={out}"]
    assert _main(["--config", os.path.join(REPO, "configs", "gaussian-capture.yaml"), "--train", *common,
                  "trainer.max_steps=4"], monkeypatch) == 0
    (source,) = glob.glob(os.path.join(out, "gaussian-capture", "*"))
    spy = Spy(mg, monkeypatch)
    recipe = os.path.join(REPO, "custom", "mobilegen3d", "configs", "in2n-gaussians.yaml")
    assert _main(["--config", recipe, "--train", *common, "trainer.max_steps=6", "system.prompt=make it gold",
                  f"system.guidance.pretrained_model_name_or_path={tiny_ip2p}", "system.edit_rate=2",
                  "system.diffusion_steps=2"], monkeypatch) == 0
    (trial,) = glob.glob(os.path.join(out, "in2n-gaussians", "*"))
    assert [(s, j) for s, j, _ in _edits_csv(trial)] == [(0, 0), (2, 1), (4, 2)]
    assert [(s, j) for s, j, _ in spy.replaced] == [(0, 0), (2, 1), (4, 2)]
    photos = _photos(recon["scene"], "black")  # gaussian-capture: eval_background black
    for (_, j, _), call in zip(_edits_csv(trial), spy.edits):
        assert torch.allclose(call["original"][0], photos[j], atol=2e-3)
    a = torch.load(os.path.join(source, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    b = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    means_a, means_b = a["state_dict"]["geometry.params.means"], b["state_dict"]["geometry.params.means"]
    assert means_a.shape == means_b.shape and (means_a - means_b).abs().max() < 0.02  # 6 small steps from the source
    assert os.path.getsize(os.path.join(trial, "save", "it6-export", "gaussians.ply")) > 0
    assert os.path.getsize(os.path.join(trial, "save", "it6-test.mp4")) > 0


@pytest.mark.parametrize("recipe, kind", [("in2n.yaml", "_In2NNeRF"), ("in2n-gaussians.yaml", "_In2NGaussians")])
def test_in2n_recipes_validate_and_build(mg, recipe, kind, tmp_path):
    import threestudio
    from threestudio.utils.config import ConfigError, load_config

    path = os.path.join(REPO, "custom", "mobilegen3d", "configs", recipe)
    with pytest.raises(ConfigError, match="system.prompt"):  # the instruction is mandatory
        load_config(path, cli_args=[f"exp_root_dir={tmp_path}", "data.dataroot=load/scenes/quickstart"])
    cfg = load_config(path, cli_args=[f"exp_root_dir={tmp_path}", "data.dataroot=load/scenes/quickstart",
                                      "system.prompt=make it snowy"])
    assert cfg.trainer.max_steps == 15000 and cfg.system.edit_rate == 10 and cfg.system.edit_count == 1
    assert cfg.system.diffusion_steps == 20 and (cfg.system.guidance_scale, cfg.system.image_guidance_scale) == (7.5,
                                                                                                               1.5)
    system = threestudio.find(cfg.system_type, "system")(cfg.system)
    assert type(system).__name__ == kind and system.guidance is None  # the guidance is built when training starts
    assert not any(k.startswith("guidance") for k in system.state_dict())
    with pytest.raises(ConfigError, match="system.source"):
        threestudio.find(cfg.system_type, "system")({**cfg.system, "weights": "/some/last.ckpt"})

"""launch.py end to end: trial layout, resume equivalence, atomic checkpoints, extensions."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tests.core.conftest import TOY_EXT, TOY_YAML

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = os.path.join(REPO, "launch.py")


def run_launch(args, cwd, env=None, timeout=300):
    e = dict(os.environ)
    e.pop("TRITON_INTERPRET", None)
    e.update(env or {})
    return subprocess.run([sys.executable, LAUNCH, *args], cwd=cwd, env=e, capture_output=True, text=True,
                          timeout=timeout)


def only_trial(root):
    exp = os.path.join(root, "toy")
    (trial,) = os.listdir(exp)
    return os.path.join(exp, trial)


def test_train_writes_trial_layout_then_export_and_test(tmp_path):
    out = tmp_path / "out"
    r = run_launch(["--config", TOY_YAML, "--train", "--extensions", TOY_EXT, f"exp_root_dir={out}"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "running on CPU" in r.stdout + r.stderr
    trial = only_trial(out)
    assert os.path.basename(trial).startswith("run@")
    for rel in ["configs/raw.yaml", "configs/parsed.yaml", "cmd.txt", "ckpts/last.ckpt", "ckpts/epoch=0-step=3.ckpt",
                "ckpts/epoch=0-step=6.ckpt", "save/it3-0.png", "save/it6-1.png", "save/it6-test/0.png",
                "save/it6-test.mp4", "save/metrics.json", "csv_logs/metrics.csv", "code/launch.py",
                "code/threestudio/launcher.py"]:
        assert os.path.isfile(os.path.join(trial, rel)), rel
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(trial, "tb_logs")))
    assert not [f for f in os.listdir(os.path.join(trial, "ckpts")) if ".tmp-" in f]
    # the files read back
    from omegaconf import OmegaConf
    from PIL import Image

    parsed = OmegaConf.load(os.path.join(trial, "configs/parsed.yaml"))
    assert parsed.trial_dir == trial and parsed.system.geometry.n_hidden == 16
    assert np.asarray(Image.open(os.path.join(trial, "save/it6-0.png"))).shape == (16, 32, 3)
    assert json.load(open(os.path.join(trial, "save/metrics.json"))) == {"step": 6, "test_views": 3}
    status = json.load(open(os.path.join(trial, "status.json")))  # read by the gallery
    assert status["status"] == "finished" and status["exit_code"] == 0 and status["pid"] > 0 and status["started"]
    import imageio.v3 as iio

    assert iio.imread(os.path.join(trial, "save/it6-test.mp4")).shape[0] == 3
    ckpt = torch.load(os.path.join(trial, "ckpts/last.ckpt"), weights_only=False)
    assert ckpt["global_step"] == 6 and "threestudio_rng_states" in ckpt

    # --export from the trial folder, --test from 'last'
    r = run_launch(["--export", "--resume", trial, "--extensions", TOY_EXT], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    exp = os.path.join(trial, "save/it6-export")
    import trimesh

    glb = trimesh.load(os.path.join(exp, "model.glb"), force="mesh")
    assert glb.faces.shape == (4, 3) and glb.visual.uv.shape == (4, 2)
    assert np.asarray(glb.visual.material.baseColorTexture).shape[:2] == (8, 8)
    obj = trimesh.load(os.path.join(exp, "model.obj"), force="mesh")
    assert obj.visual.uv.shape[1] == 2 and obj.visual.material.image is not None
    from threestudio.utils.saving import read_ply_points

    assert read_ply_points(os.path.join(exp, "points.ply"))["x"].shape == (4,)
    r = run_launch(["--config", TOY_YAML, "--test", "--resume", "last", "--extensions", TOY_EXT,
                    f"exp_root_dir={out}"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Resuming from" in r.stdout + r.stderr and os.listdir(out / "toy") == [os.path.basename(trial)]


def _params(ckpt_path):
    sd = torch.load(ckpt_path, weights_only=False)["state_dict"]
    return {k: v for k, v in sd.items() if k.startswith("geometry.")}


def test_resume_reaches_the_same_parameters(tmp_path, toy):
    from threestudio.launcher import main

    common = ["--extensions", TOY_EXT, "checkpoint.every_n_train_steps=3"]
    assert main(["--config", TOY_YAML, "--train", *common, f"exp_root_dir={tmp_path}/a", "trainer.max_steps=9",
                 "tag=straight"]) == 0
    assert main(["--config", TOY_YAML, "--train", *common, f"exp_root_dir={tmp_path}/b", "trainer.max_steps=3",
                 "tag=stopped"]) == 0
    trial_b = only_trial(tmp_path / "b")
    assert main(["--config", TOY_YAML, "--train", *common, f"exp_root_dir={tmp_path}/b", "trainer.max_steps=9",
                 "tag=stopped", "--resume", trial_b]) == 0
    assert os.listdir(tmp_path / "b" / "toy") == [os.path.basename(trial_b)]  # resumed in place
    a = _params(os.path.join(only_trial(tmp_path / "a"), "ckpts/last.ckpt"))
    b = _params(os.path.join(trial_b, "ckpts/last.ckpt"))
    assert torch.load(os.path.join(trial_b, "ckpts/last.ckpt"), weights_only=False)["global_step"] == 9
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the check can fail: a run with another seed ends elsewhere
    assert main(["--config", TOY_YAML, "--train", *common, f"exp_root_dir={tmp_path}/c", "trainer.max_steps=9",
                 "--seed", "8"]) == 0
    c = _params(os.path.join(only_trial(tmp_path / "c"), "ckpts/last.ckpt"))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_checkpoint_write_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from threestudio.utils import checkpoint as ck

    path = str(tmp_path / "last.ckpt")
    io = ck.AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.arange(4.0)}, path)

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    good = io.load_checkpoint(path)
    assert good["step"] == 1 and torch.equal(good["w"], torch.arange(4.0))
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_sigkill_during_checkpoint_write_leaves_last_good_checkpoint(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {REPO!r})
        from threestudio.utils import checkpoint as ck
        io = ck.AtomicCheckpointIO()
        io.save_checkpoint({{"step": 1, "w": torch.arange(3.0)}}, {str(tmp_path / 'last.ckpt')!r})
        real_save = torch.save
        def slow_save(obj, f):
            import io as _io
            buf = _io.BytesIO(); real_save(obj, buf); data = buf.getvalue()
            f.write(data[: len(data) // 2]); f.flush()
            print("WRITING", flush=True)
            time.sleep(60)
            f.write(data[len(data) // 2:])
        ck.torch.save = slow_save
        io.save_checkpoint({{"step": 2, "w": torch.zeros(1000)}}, {str(tmp_path / 'last.ckpt')!r})
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "WRITING"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    files = os.listdir(tmp_path)
    assert "last.ckpt" in files and any(".tmp-" in f for f in files)  # killed mid-write, temp left behind
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.arange(3.0))


EXT_INIT = '''
from dataclasses import dataclass, field
import torch, torch.nn as nn
import threestudio
from threestudio.models.geometry.base import BaseImplicitGeometry
from threestudio.systems.base import BaseSystem

@threestudio.register("tmpext-geometry")
class G(BaseImplicitGeometry):
    def configure(self):
        super().configure()
        self.w = nn.Parameter(torch.ones(3))
    def forward(self, p, output_normal=False):
        return {"density": (p * self.w).sum(-1)}

@threestudio.register("tmpext-system")
class S(BaseSystem):
    @dataclass
    class Config(BaseSystem.Config):
        geometry_type: str = "tmpext-geometry"
        geometry: dict = field(default_factory=dict)
    def configure(self):
        self.geometry = threestudio.find(self.cfg.geometry_type, "geometry")(self.cfg.geometry)
    def training_step(self, batch, i):
        loss = self.geometry(batch["points"])["density"].pow(2).mean()
        self.log("train/loss", loss)
        return loss
'''


def test_custom_extension_is_found_and_a_broken_one_stops_the_run(tmp_path):
    custom = tmp_path / "custom"
    (custom / "myext").mkdir(parents=True)
    (custom / "myext" / "__init__.py").write_text(EXT_INIT)
    (custom / "old_disabled").mkdir()
    (custom / "old_disabled" / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"extends: {TOY_YAML}\nsystem_type: tmpext-system\nsystem:\n  geometry_type: tmpext-geometry\n"
                      f"  geometry: {{__replace__: true}}\n  loss: {{}}\n  scheduler: null\nexp_root_dir: {tmp_path}/out\n"
                      f"trainer:\n  max_steps: 2\n")
    env = {"THREESTUDIO_CUSTOM_DIR": str(custom)}
    # the data module still comes from the toy extension, passed with --extensions
    r = run_launch(["--config", str(recipe), "--train", "--extensions", TOY_EXT], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    ckpt = torch.load(os.path.join(only_trial(tmp_path / "out"), "ckpts/last.ckpt"), weights_only=False)
    assert ckpt["global_step"] == 2 and "geometry.w" in ckpt["state_dict"]

    (custom / "broken").mkdir()
    (custom / "broken" / "__init__.py").write_text("import threestudio\nx = 1 / 0\n")
    r = run_launch(["--config", str(recipe), "--train", "--extensions", TOY_EXT], cwd=tmp_path, env=env)
    assert r.returncode == 3
    err = r.stdout + r.stderr
    assert f"Extension {custom / 'broken'} failed to import" in err
    assert "ZeroDivisionError" in err and "never imported" not in err


def test_a_loss_weight_that_is_never_read_is_reported_after_the_first_step(tmp_path, caplog):
    import logging

    from threestudio.data.synthetic_scene import make_scene
    from threestudio.launcher import main

    make_scene(str(tmp_path / "scene"), n_train=4, n_test=1, resolution=16, progress=False)
    logger = logging.getLogger("threestudio")
    logger.addHandler(caplog.handler)
    try:
        rc = main(["--config", os.path.join(REPO, "configs", "quickstart.yaml"), "--train", f"exp_root_dir={tmp_path}",
                   f"data.dataroot={tmp_path / 'scene'}", "data.synthetic_scene={n_train: 4, n_test: 1, resolution: 16}",
                   "trainer.max_steps=2", "trainer.val_check_interval=100", "system.export_after_train=false",
                   "system.loss.lambda_sparsty=1.0", "system.loss.lambda_spam=0.0"])
    finally:
        logger.removeHandler(caplog.handler)
        os.environ.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)
    assert rc == 0
    warned = [r.getMessage() for r in caplog.records if "never read" in r.getMessage()]
    assert len(warned) == 1  # lambda_spam is zero: harmless, not reported
    assert "system.loss.lambda_sparsty" in warned[0] and "did you mean lambda_sparsity?" in warned[0]


def test_quiet_lightning_drops_only_the_noise_warnings():
    import warnings

    from threestudio.launcher import _quiet_lightning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _quiet_lightning()
        warnings.warn("Found 1154 module(s) in eval mode at the start of training. This may lead to unexpected "
                      "behavior during training.")
        warnings.warn("The 'train_dataloader' does not have many workers which may be a bottleneck.")
        warnings.warn("a warning of the user's own")
    assert [str(w.message) for w in caught] == ["a warning of the user's own"]

"""scripts/bench/bench_zero1tog.py (``--tiny`` on the CPU: the JSON's fields, the loader check and its failure) and
custom/zero1tog/scripts/export_unet.py (a tiny trained trial's EMA / raw UNet as a model folder that load_unet and the
inference recipe load, giving the trial's EMA outputs; the refusals and their messages)."""

import glob
import importlib.util
import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from tests.zero1tog.conftest import REPO, load_ext

load_ext()
from tests.zero1tog import test_system as _sys  # noqa: E402
from tests.zero1tog.test_inference import rgba_disc, save_png, snapshot  # noqa: E402
from tests.zero1tog.test_launch_inference import _reference  # noqa: E402

tiny_models, tiny_data = _sys.tiny_models, _sys.tiny_data  # fixtures

BENCH = os.path.join(REPO, "scripts", "bench", "bench_zero1tog.py")
EXPORT = os.path.join(REPO, "custom", "zero1tog", "scripts", "export_unet.py")
CONFIGS = os.path.join(REPO, "custom", "zero1tog", "configs")


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _module(BENCH, "bench_zero1tog")
X = _module(EXPORT, "export_unet")


def _main(args):
    from threestudio.launcher import main

    return main([str(a) for a in args])


# ----------------------------------------------------------------------------------------------------- bench
@pytest.mark.slow
def test_bench_tiny_runs_on_cpu_and_writes_its_fields(tmp_path, capsys):
    out = tmp_path / "res" / "tiny.json"
    assert bench.main(["--tiny", "--batch", "1", "--steps", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["tiny"] is True and res["device"] == "cpu" and res["compile"] is False
    t, i, lc = res["train_step"], res["inference"], res["loader_check"]
    assert t["objects"] == 1 and t["views"] == 6 and t["attributes"] == 5 and t["unet_batch"] == 30
    assert t["resolution"] == 32 and t["latent"] == 4 and t["steps"] == 1 and len(t["times_s"]) == 1
    assert t["median_s"] > 0 and t["first_s"] > 0 and t["ema"] is True and t["optimizer"] == "AdamW"
    assert t["peak_mem_mb"] is None and t["compile_s"] is None  # CPU: no CUDA memory figure
    assert i["steps"] == 2 and i["guidance_scale"] == 5.0 and i["eta"] == 1.0 and i["unet_batch"] == 60
    assert i["seconds_per_object"] > 0 and i["splatter_shape"] == [1, 6, 14, 32, 32] and i["splatter_finite"]
    assert i["unet_weights"] == "ema" and "peak_mem_mb" in i
    assert lc["ok"] and lc["tensors"] == lc["expected_tensors"] > 100 and lc["problems"] == []
    assert lc["parameters"] == lc["layout_parameters"]
    assert set(res["setup"]) >= {"build_s", "save_s", "load_and_grow_s"}
    text = capsys.readouterr().out
    assert "stage-2 train step" in text and "inference (2 DDIM, CFG 5)" in text and "loader check: PASS" in text


def test_bench_loader_check_fails_on_a_wrong_tensor_and_passes_the_full_size_layout(tmp_path):
    from custom.zero1tog.model.layout import zero1tog_unet_config
    from custom.zero1tog.model.loading import load_unet
    from custom.zero1tog.model.unet import Zero1toGUNet

    bench.write_base_model(str(tmp_path), tiny=True, device=torch.device("cpu"))
    unet = load_unet(str(tmp_path), sample_size=4)
    assert bench.loader_check(SimpleNamespace(unet=unet), str(tmp_path), tiny=True)["ok"]

    class Broken:  # one tensor misshapen, one missing
        config = unet.config

        def state_dict(self):
            sd = dict(unet.state_dict())
            sd["conv_in.weight"] = torch.zeros(40, 4, 3, 3)
            sd.pop("class_embedding.linear_1.bias")
            return sd

        def parameters(self):
            return unet.parameters()

    lc = bench.loader_check(SimpleNamespace(unet=Broken()), str(tmp_path), tiny=True)
    assert not lc["ok"]
    assert any("conv_in.weight has shape (40, 4, 3, 3)" in p for p in lc["problems"]), lc["problems"]
    assert any("missing tensor class_embedding.linear_1.bias" in p for p in lc["problems"])

    # the full-size model (meta device) matches the official layout; the tiny base folder is not the official model
    with torch.device("meta"):
        full = Zero1toGUNet(**zero1tog_unet_config())
    lc = bench.loader_check(SimpleNamespace(unet=full), str(tmp_path), tiny=False)
    assert lc["problems"] == [] and lc["architecture_differences"] == [] and lc["tensors"] == lc["expected_tensors"]
    assert lc["parameters"] == lc["layout_parameters"] and round(lc["parameters"] / 1e6, 1) == 910.8
    assert lc["base_folder_problems"] and not lc["ok"]


def test_bench_out_of_memory_is_reported_not_raised(capsys):
    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    res = bench.guarded(oom, torch.device("cpu"), "16 objects per step")
    assert res["error"].startswith("CUDA out of memory at 16 objects per step: CUDA out of memory. Tried")
    assert "error: CUDA out of memory" in capsys.readouterr().err
    with pytest.raises(ValueError):
        bench.guarded(lambda: (_ for _ in ()).throw(ValueError("other")), torch.device("cpu"), "x")


def test_bench_refuses_a_gpu_run_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def trial(tiny_models, tiny_data, tmp_path_factory):
    """A tiny stage-2 trial, 2 steps (its EMA differs from its raw weights)."""
    from threestudio.launcher import TIMESTAMP_ENV

    root = tmp_path_factory.mktemp("z1g_export_trial")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(TIMESTAMP_ENV, raising=False)
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        rc = _main(["--config", os.path.join(CONFIGS, "tiny-cpu.yaml"), "--train", f"data.dataroot={tiny_data}",
                    "system.stage=joint", "trainer.max_steps=2", f"system.pretrained_model_name_or_path={tiny_models}",
                    f"exp_root_dir={root}"])
    assert rc == 0
    (t,) = glob.glob(os.path.join(str(root), "*", "*"))
    return t


def _weights(trial_dir):
    sd = torch.load(os.path.join(trial_dir, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)["state_dict"]
    ema = {k[len("unet_ema."):]: v for k, v in sd.items() if k.startswith("unet_ema.")}
    raw = {k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")}
    return ema, raw


def _unet_out(unet):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 8, 4, 4, generator=g)
    tok = torch.randn(30, 1, 16, generator=g)
    lab = torch.randn(30, 16, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor(500), tok, class_labels=lab, num_attributes=5).sample


@pytest.mark.slow
def test_export_loads_back_and_matches_the_trial_ema(trial, tiny_models, tmp_path, monkeypatch):
    from custom.zero1tog.model.loading import load_unet
    from custom.zero1tog.model.unet import Zero1toGUNet

    trial_before = snapshot(trial)
    out = tmp_path / "model"
    info = X.export(trial, str(out), log=lambda s: None)
    assert snapshot(trial) == trial_before  # the trial is only read
    names = set(os.listdir(out))
    assert {"unet", "vae", "image_encoder", "scheduler", "export.json"} <= names
    assert not any(n.endswith(".tmp") for n in os.listdir(tmp_path))
    assert os.path.isfile(out / "unet" / "config.json")
    assert os.path.isfile(out / "unet" / "diffusion_pytorch_model.safetensors")
    meta = json.loads((out / "export.json").read_text())
    assert meta == json.loads(json.dumps(info)) and meta["weights"] == "ema" and meta["global_step"] == 2
    for part in ("vae", "image_encoder", "scheduler"):  # byte copies of the base's
        assert snapshot(out / part) == snapshot(os.path.join(tiny_models, part)), part

    ema, raw = _weights(trial)
    unet = load_unet(str(out))
    assert isinstance(unet, Zero1toGUNet)
    sd = unet.state_dict()
    assert sd.keys() == ema.keys() and all(torch.equal(sd[k], ema[k]) for k in ema)
    ref = Zero1toGUNet.from_pretrained(tiny_models, subfolder="unet")
    ref.load_state_dict(ema)
    got = _unet_out(unet)
    assert torch.equal(got, _unet_out(ref))
    ref.load_state_dict(raw)
    assert not torch.allclose(got, _unet_out(ref), atol=1e-5)  # EMA, not the raw weights

    # through the inference recipe: the same gaussians as the pipeline with the trial's EMA UNet
    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    photo = photo_dir / "object.png"
    save_png(photo, rgba_disc())
    from threestudio.launcher import TIMESTAMP_ENV

    monkeypatch.delenv(TIMESTAMP_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    rc = _main(["--config", os.path.join(CONFIGS, "image-to-gaussians-tiny-cpu.yaml"), "--test",
                f"system.image={photo}", f"system.pretrained_model_name_or_path={out}",
                f"exp_root_dir={tmp_path / 'inf'}"])
    assert rc == 0
    (inf,) = glob.glob(str(tmp_path / "inf" / "*" / "*"))
    got = torch.load(os.path.join(inf, "save", "splatter.pt"))
    assert torch.allclose(got, _reference(tiny_models, str(photo), ema), atol=1e-5)
    assert not torch.allclose(got, _reference(tiny_models, str(photo), raw), atol=1e-4)

    # --raw: the trained weights themselves
    out_raw = tmp_path / "model_raw"
    assert X.main([trial, str(out_raw), "--raw"]) == 0
    sd = load_unet(str(out_raw)).state_dict()
    assert all(torch.equal(sd[k], raw[k]) for k in raw)
    assert json.loads((out_raw / "export.json").read_text())["weights"] == "raw"


@pytest.mark.slow
def test_export_refusals_and_their_messages(trial, tiny_models, tmp_path, capsys):
    # into the trial folder (or a folder inside it)
    for target in (trial, os.path.join(trial, "save", "model")):
        with pytest.raises(X.ExportError, match="refusing to write into the trial folder"):
            X.export(trial, target)
    assert not os.path.exists(os.path.join(trial, "save", "model"))
    # a non-empty output folder: refused, untouched
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    assert X.main([trial, str(full)]) == 2
    err = capsys.readouterr().err
    assert "refusing to write into the non-empty folder" in err and str(full) in err
    assert os.listdir(full) == ["keep.txt"]
    # an empty one is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    X.export(trial, str(empty), log=lambda s: None)
    assert "unet" in os.listdir(empty)

    # a trial trained from a hub id: --base is needed, and works
    hub = tmp_path / "hub_trial"
    shutil.copytree(trial, hub)
    parsed = hub / "configs" / "parsed.yaml"
    parsed.write_text(parsed.read_text().replace(f"pretrained_model_name_or_path: {tiny_models}",
                                                 "pretrained_model_name_or_path: lambdalabs/sd-image-variations-diffusers"))
    assert "lambdalabs/sd-image-variations-diffusers" in parsed.read_text()
    with pytest.raises(X.ExportError, match="hub id 'lambdalabs/sd-image-variations-diffusers'.*--base FOLDER"):
        X.export(str(hub), str(tmp_path / "o1"))
    assert not os.path.exists(tmp_path / "o1")
    with pytest.raises(X.ExportError, match="does not exist: pass --base FOLDER"):
        X.export(str(hub), str(tmp_path / "o1"), base=str(tmp_path / "nowhere"))
    X.export(str(hub), str(tmp_path / "o2"), base=tiny_models, log=lambda s: None)
    assert json.loads((tmp_path / "o2" / "export.json").read_text())["base"] == os.path.abspath(tiny_models)

    # a bare checkpoint (no trial config) without EMA weights
    bare = tmp_path / "bare"
    bare.mkdir()
    ema, raw = _weights(trial)
    torch.save({"state_dict": {f"unet.{k}": v for k, v in raw.items()}, "global_step": 2}, bare / "model.ckpt")
    with pytest.raises(X.ExportError, match="no trial config naming its base model.*--base FOLDER"):
        X.export(str(bare / "model.ckpt"), str(tmp_path / "o3"))
    with pytest.raises(X.ExportError, match="holds no EMA UNet.*pass --raw"):
        X.export(str(bare / "model.ckpt"), str(tmp_path / "o3"), base=tiny_models)
    with pytest.raises(X.ExportError, match="refusing to write into the checkpoint's folder"):
        X.export(str(bare / "model.ckpt"), str(bare / "out"), base=tiny_models, raw=True)
    X.export(str(bare / "model.ckpt"), str(tmp_path / "o3"), base=tiny_models, raw=True, log=lambda s: None)
    assert not os.path.exists(tmp_path / "o3.tmp")
    # not a checkpoint at all
    with pytest.raises(X.ExportError, match="no ckpts/last.ckpt"):
        X.export(str(tmp_path / "empty"), str(tmp_path / "o4"))


def test_export_unet_config_grows_a_base_model(tmp_path):
    bench.write_base_model(str(tmp_path), tiny=True, device=torch.device("cpu"))
    cfg = X.unet_config({"unet_changes": {"sample_size": 4}}, str(tmp_path))
    assert cfg["in_channels"] == 8 and cfg["sample_size"] == 4 and cfg["class_embed_type"] == "projection"
    assert cfg["num_views"] == 6 and cfg["num_attributes"] == 5 and cfg["cd_attention_mid"] is True
    assert tuple(cfg["block_out_channels"]) == (40, 80)
    from custom.zero1tog.model.layout import zero1tog_unet_config

    assert X.unet_config({"unet_name_or_path": "lambdalabs/sd-image-variations-diffusers"}, str(tmp_path)) == \
        zero1tog_unet_config()


@pytest.mark.slow
def test_export_of_a_v_prediction_trial_says_so_in_its_scheduler(tiny_models, tiny_data, tmp_path, monkeypatch):
    """A trial trained with system.prediction_type=v_prediction on an epsilon base: the export's scheduler config
    says v_prediction (the rest as the base's), and the pipeline loaded from the export samples with it."""
    from threestudio.launcher import TIMESTAMP_ENV

    from custom.zero1tog.inference import Zero1toGPipeline

    monkeypatch.delenv(TIMESTAMP_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _main(["--config", os.path.join(CONFIGS, "tiny-cpu.yaml"), "--train", f"data.dataroot={tiny_data}",
                  "trainer.max_steps=1", f"system.pretrained_model_name_or_path={tiny_models}",
                  "system.prediction_type=v_prediction", f"exp_root_dir={tmp_path / 'runs'}"]) == 0
    (trial_v,) = glob.glob(str(tmp_path / "runs" / "*" / "*"))
    base_before = snapshot(tiny_models)
    info = X.export(trial_v, str(tmp_path / "model"), log=lambda s: None)
    assert snapshot(tiny_models) == base_before  # the base's own scheduler is untouched
    assert info["prediction_type"] == "v_prediction" and info["scheduler_prediction_type_written"] is True
    base = json.loads(open(os.path.join(tiny_models, "scheduler", "scheduler_config.json")).read())
    got = json.loads((tmp_path / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert base.get("prediction_type", "epsilon") == "epsilon" and got["prediction_type"] == "v_prediction"
    assert {k: v for k, v in got.items() if k != "prediction_type"} == \
        {k: v for k, v in base.items() if k != "prediction_type"}
    pipe = Zero1toGPipeline.from_pretrained(str(tmp_path / "model"))
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    # no scheduler/ in the base: one is written from SD-image-variations' config
    assert X.set_prediction_type(str(tmp_path / "bare" / "scheduler"), "v_prediction") is True
    cfg = json.loads((tmp_path / "bare" / "scheduler" / "scheduler_config.json").read_text())
    assert cfg["prediction_type"] == "v_prediction" and cfg["beta_schedule"] == "scaled_linear"
    assert X.set_prediction_type(str(tmp_path / "bare" / "scheduler"), "v_prediction") is False

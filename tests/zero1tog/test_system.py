"""zero1tog-system (custom/zero1tog/system.py): the tiny recipe trains stage 1 ("mix") and stage 2 ("joint", from
stage 1's weights) on CPU through the launcher, a stopped-and-resumed run ends bit-equal to an uninterrupted one,
and the pieces (Min-SNR weights, stage-1 attribute choice and class labels, condition dropout, stage-2 timesteps,
EMA) match hand computations."""

import glob
import math
import os

import pytest
import torch

from tests.zero1tog.conftest import REPO, load_ext

load_ext()
from custom.zero1tog import system as Z  # noqa: E402  (registers zero1tog-system)
from custom.zero1tog import make_data, meshes, gt_fit  # noqa: E402
from tests.zero1tog.test_model_unet import TINY  # noqa: E402

RECIPE = os.path.join(REPO, "custom", "zero1tog", "configs", "tiny-cpu.yaml")
RES = 32


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from custom.zero1tog.model.unet import Zero1toGUNet
    from threestudio.utils.weights import SD_SCHEDULER, TINY_VAE

    root = tmp_path_factory.mktemp("tiny_sdiv")
    torch.manual_seed(0)
    Zero1toGUNet(**TINY).save_pretrained(root / "unet")
    AutoencoderKL(**TINY_VAE).save_pretrained(root / "vae")
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(root / "image_encoder")
    DDPMScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k != "set_alpha_to_one"}).save_pretrained(
        root / "scheduler")
    return str(root)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("z1g_sys")
    mesh_dir = str(base / "meshes")
    meshes.make_procedural_meshes(mesh_dir, 3, seed=0, resolution=24)
    cfg = make_data.MakeConfig(fit=gt_fit.FitConfig(resolution=RES, steps=0, tile_size=8), n_extra=2, n_heldout=1)
    out = str(base / "data")
    make_data.make_dataset(mesh_dir, out, cfg, show_progress=False, log=lambda s: None)
    return out


def _main(args):
    from threestudio.launcher import main

    assert main(args) == 0


def _base(models, data, root, *extra):
    return ["--config", RECIPE, "--train", f"data.dataroot={data}", f"system.pretrained_model_name_or_path={models}",
            f"exp_root_dir={root}", *extra]


def _ckpt(trial):
    return torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)


@pytest.fixture
def no_timestamp(monkeypatch):
    from threestudio.launcher import TIMESTAMP_ENV

    monkeypatch.delenv(TIMESTAMP_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


# ----------------------------------------------------------------------------------------- through the launcher
@pytest.mark.slow
def test_tiny_recipe_trains_both_stages_and_stage2_starts_from_stage1(tiny_models, tiny_data, tmp_path,
                                                                      no_timestamp):
    _main(_base(tiny_models, tiny_data, tmp_path / "s1"))
    (trial1,) = glob.glob(str(tmp_path / "s1" / "*" / "*"))
    c1 = _ckpt(trial1)
    assert c1["global_step"] == 4
    sd1 = c1["state_dict"]
    assert int(sd1["ema_updates"]) == 4
    from safetensors.torch import load_file

    start = load_file(os.path.join(tiny_models, "unet", "diffusion_pytorch_model.safetensors"))
    joint = [k for k in start if "_joint_mid." in k]
    moved = [k for k in start if "_joint_mid." not in k and not torch.equal(sd1["unet." + k], start[k])]
    assert joint and moved
    for k in joint:  # stage 1: no joint attention, those modules stay as they were
        assert torch.equal(sd1["unet." + k], start[k]), k
    assert any(not torch.equal(sd1["unet." + k], sd1["unet_ema." + k]) for k in moved)  # EMA lags the weights
    assert c1["lr_schedulers"][0]["_last_lr"] == pytest.approx([1e-4, 1e-3])  # class embedding x10, past warm-up

    # stage 2 from stage 1's trial: the UNet (and its EMA) start as stage 1's EMA weights
    from omegaconf import OmegaConf

    from threestudio.utils.trials import load_trial_config

    cfg = load_trial_config(os.path.join(trial1, "ckpts", "last.ckpt")).system
    cfg = OmegaConf.merge(cfg, {"stage": "joint", "init_from": trial1})
    sysm = Z.Zero1toGSystem(cfg)
    for k, v in sysm.unet.state_dict().items():
        assert torch.equal(v, sd1["unet_ema." + k]), k
        assert torch.equal(sysm.unet_ema.state_dict()[k], v), k
    assert all(p.requires_grad for p in sysm.unet.parameters())  # stage 2: all parameters

    _main(_base(tiny_models, tiny_data, tmp_path / "s2", "system.stage=joint", f"system.init_from={trial1}",
                "trainer.max_steps=2", "system.loss.lambda_render=0.5"))
    (trial2,) = glob.glob(str(tmp_path / "s2" / "*" / "*"))
    sd2 = _ckpt(trial2)["state_dict"]
    assert any(not torch.equal(sd2["unet." + k], sd1["unet_ema." + k]) for k in joint)  # joint attention trains


@pytest.mark.slow
def test_resumed_run_reaches_the_same_weights(tiny_models, tiny_data, tmp_path, no_timestamp):
    """Stage 2 stopped at step 2 and resumed to 4 = 4 steps in one go (data, attributes, t, noise, dropout, EMA)."""
    extra = ("system.stage=joint", "system.condition_drop=0.5")
    _main(_base(tiny_models, tiny_data, tmp_path / "a", *extra))
    _main(_base(tiny_models, tiny_data, tmp_path / "b", *extra, "trainer.max_steps=2"))
    (trial_b,) = glob.glob(str(tmp_path / "b" / "*" / "*"))
    _main(["--train", "--resume", trial_b, "trainer.max_steps=4"])
    (trial_a,) = glob.glob(str(tmp_path / "a" / "*" / "*"))
    a, b = _ckpt(trial_a), _ckpt(trial_b)
    assert a["global_step"] == b["global_step"] == 4
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert a["lr_schedulers"][0]["_last_lr"] == b["lr_schedulers"][0]["_last_lr"]
    assert a["optimizer_states"][0]["state"].keys() == b["optimizer_states"][0]["state"].keys()


# ------------------------------------------------------------------------------------------------ the pieces
def test_min_snr_weights_hand_computed():
    abar = torch.tensor([0.9, 0.5, 0.1, 0.01])
    t = torch.tensor([0, 1, 2, 3, 0])
    snr = [9.0, 1.0, 1.0 / 9.0, 1.0 / 99.0, 9.0]
    eps = Z.min_snr_weights(abar, t, 5.0, "epsilon")
    assert torch.allclose(eps, torch.tensor([min(s, 5.0) / s for s in snr]), atol=1e-6)
    assert eps[0].item() == pytest.approx(5.0 / 9.0) and eps[1].item() == pytest.approx(1.0)
    v = Z.min_snr_weights(abar, t, 5.0, "v_prediction")
    assert torch.allclose(v, torch.tensor([min(s, 5.0) / (s + 1) for s in snr]), atol=1e-6)
    assert v[0].item() == pytest.approx(0.5) and v[2].item() == pytest.approx(0.1)
    assert torch.equal(Z.min_snr_weights(abar, t, 0.0, "epsilon"), torch.ones(5))
    with pytest.raises(ValueError, match="prediction_type"):
        Z.min_snr_weights(abar, t, 5.0, "sample")


def test_ema_update_hand_computed():
    lin = torch.nn.Linear(2, 2)
    shadow = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        shadow.weight.zero_()
        lin.bias.copy_(torch.tensor([5.0, 6.0]))
        shadow.bias.fill_(1.0)
    lin.bias.requires_grad_(False)  # a frozen parameter is copied, not averaged
    assert Z.ema_decay(0.9999, 0) == pytest.approx(0.1) and Z.ema_decay(0.9999, 8) == pytest.approx(0.5)
    assert Z.ema_decay(0.3, 100) == pytest.approx(0.3)
    Z.ema_update(shadow, lin, Z.ema_decay(0.9999, 8))
    assert torch.allclose(shadow.weight, torch.tensor([[0.5, 1.0], [1.5, 2.0]]))
    assert torch.equal(shadow.bias, torch.tensor([5.0, 6.0]))
    Z.ema_update(shadow, lin, 0.75)
    assert torch.allclose(shadow.weight, 0.75 * torch.tensor([[0.5, 1.0], [1.5, 2.0]]) + 0.25 * lin.weight)


def test_condition_dropout_rate():
    torch.manual_seed(0)
    keep = Z.condition_keep_mask(200_000, 0.05)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    assert abs((1 - keep.mean().item()) - 0.05) < 0.003
    assert torch.equal(Z.condition_keep_mask(10, 0.0), torch.ones(10))
    assert Z.condition_keep_mask(1000, 1.0).sum() == 0


def test_stage_timesteps_one_t_per_object_with_attribute_offsets():
    torch.manual_seed(0)
    t1 = Z.stage_timesteps(4000, 1, 1000, 0)
    assert t1.shape == (4000, 1) and t1.min() >= 0 and t1.max() <= 999
    torch.manual_seed(1)
    t = Z.stage_timesteps(4000, 5, 1000, 100)
    assert t.shape == (4000, 5) and t.min() >= 0 and t.max() <= 999
    mid = t[(t > 150).all(1) & (t < 850).all(1)]
    spread = mid.max(1).values - mid.min(1).values
    assert spread.max() <= 199 and spread.float().mean() > 100  # offsets within [-100, 100) around one t
    torch.manual_seed(1)
    base = torch.randint(0, 1000, (4000, 1))
    off = torch.randint(-100, 100, (4000, 5))
    assert torch.equal(t, (base + off).clamp(0, 999))


def test_trainable_parameter_sets():
    assert not Z.is_trainable("down_blocks.0.attentions.0.transformer_blocks.0.attn_joint_mid.to_q.weight", "all",
                              "mix")
    assert Z.is_trainable("down_blocks.0.attentions.0.transformer_blocks.0.attn_joint_mid.to_q.weight", "all", "joint")
    assert Z.is_trainable("conv_in.weight", "all", "mix")
    assert not Z.is_trainable("conv_in.weight", "attention", "joint")
    assert Z.is_trainable("down_blocks.0.resnets.0.time_emb_proj.weight", "attention", "mix")
    assert Z.is_trainable("class_embedding.linear_1.weight", "joint", "joint")
    assert not Z.is_trainable("mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight", "joint", "joint")
    w = Z.WarmupConstant(100)
    assert w(0) == 0.0 and w(50) == 0.5 and w(100) == 1.0 and w(10_000) == 1.0


def _system(models, data, **over):
    from omegaconf import OmegaConf

    from threestudio.utils.config import load_config

    cfg = load_config(RECIPE, cli_args=[f"data.dataroot={data}", f"system.pretrained_model_name_or_path={models}",
                                        *[f"system.{k}={v}" for k, v in over.items()]])
    from custom.zero1tog.data import SplatterDataModule

    dm = SplatterDataModule(cfg.data)
    return Z.Zero1toGSystem(OmegaConf.create(OmegaConf.to_container(cfg.system))), dm


def test_stage1_picks_one_attribute_and_the_labels_say_which(tiny_models, tiny_data):
    sysm, dm = _system(tiny_models, tiny_data)
    batch = {k: v for k, v in dm.eval_item(0).items() if k != "name"}
    batch = {k: v.expand(3, *v.shape[1:]) for k, v in batch.items()}
    att = torch.tensor([[2], [0], [4]])
    torch.manual_seed(7)
    inp = sysm.diffusion_inputs(batch, "mix", attributes=att)
    assert inp["num_attributes"] == 1 and inp["sample"].shape == (3 * 6, 8, 4, 4)
    lab = inp["labels"].view(3, 6, 16)  # (D=1 B V) folding: object-major here
    for b, a in enumerate(att[:, 0].tolist()):
        onehot = torch.zeros(5)
        onehot[a] = 1.0  # sin part: sin(1) at the chosen attribute, 0 elsewhere; cos part: cos(1) there, 1 elsewhere
        assert torch.allclose(lab[b, :, 3:8], torch.sin(onehot).expand(6, 5), atol=1e-6)
        assert torch.allclose(lab[b, :, 11:16], torch.cos(onehot).expand(6, 5), atol=1e-6)
        assert lab[b, 0, 3 + a].item() == pytest.approx(math.sin(1.0))
    # the latents are the chosen attribute's images, VAE-encoded (posterior sample x scaling factor)
    vae = sysm.condition.vae
    chosen = batch["attributes"][torch.arange(3), att[:, 0]]  # [3, V, 3, H, W]
    torch.manual_seed(7)
    with torch.no_grad():
        want = vae.encode(chosen.reshape(-1, 3, RES, RES)).latent_dist.sample() * vae.config.scaling_factor
    assert torch.equal(inp["x0"], want)
    other = batch["attributes"][torch.arange(3), (att[:, 0] + 1) % 5]
    torch.manual_seed(7)
    with torch.no_grad():
        wrong = vae.encode(other.reshape(-1, 3, RES, RES)).latent_dist.sample() * vae.config.scaling_factor
    assert not torch.allclose(inp["x0"], wrong, atol=1e-3)
    # drawn at random: exactly one attribute per object, all five seen
    torch.manual_seed(0)
    drawn = sysm.select_attributes(500, "mix", "cpu")
    assert drawn.shape == (500, 1) and set(drawn.view(-1).tolist()) == set(range(5))
    assert torch.equal(sysm.select_attributes(2, "joint", "cpu"), torch.arange(5).expand(2, 5))
    # the dropped condition is zero in both the latent and the CLIP token, for every view of that object
    inp = sysm.diffusion_inputs(batch, "joint", keep=torch.tensor([1.0, 0.0, 1.0]))
    cond = inp["sample"][:, 4:].view(5, 3, 6, 4, 4, 4)
    assert cond[:, 1].abs().max() == 0 and cond[:, 0].abs().max() > 0
    clip = inp["clip"].view(5, 3, 6, -1)
    assert clip[:, 1].abs().max() == 0 and clip[:, 2].abs().max() > 0
    # the epsilon target is the noise; the loss is Min-SNR weighted
    assert sysm.prediction_type == "epsilon"
    pred = torch.zeros_like(inp["target"])
    per = (inp["target"] ** 2).flatten(1).mean(1)
    w = Z.min_snr_weights(sysm.alphas_cumprod, inp["timesteps"], 5.0, "epsilon")
    assert torch.allclose(sysm.diffusion_loss(pred, inp), (per * w).mean())


class _OracleUNet(torch.nn.Module):
    """Returns the exact training target (epsilon or v) of one known x0 [(D B V), 4, h, w] for any noisy input."""

    def __init__(self, like, x0, alphas_cumprod, prediction_type):
        super().__init__()
        self.config = like.config
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # for the pipeline's device / dtype
        self.x0, self.abar, self.kind = x0, alphas_cumprod, prediction_type

    def forward(self, sample, t, tokens, class_labels=None, num_attributes=None):
        from types import SimpleNamespace

        ab = self.abar[int(t)]
        xt = sample[:, :4]
        eps = (xt - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        out = eps if self.kind == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * self.x0
        return SimpleNamespace(sample=out)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sampling_scheduler_follows_the_trained_prediction_type(tiny_models, tiny_data, prediction_type):
    """An exact denoiser of one x0, in the parametrisation the system trains on, sampled through the system's DDIM
    (eta 0, no guidance) lands on the deterministic-DDIM end point of that x0; the system's pipeline samples with the
    prediction type it trains on, not the model folder's (epsilon)."""
    from custom.zero1tog.inference import InferenceConfig, Zero1toGPipeline
    from custom.zero1tog.model.unet import fold

    sysm, dm = _system(tiny_models, tiny_data, prediction_type=prediction_type)
    assert sysm.prediction_type == prediction_type
    assert sysm.pipeline().scheduler.config.prediction_type == prediction_type
    sched = sysm.sampling_scheduler()
    torch.manual_seed(0)
    x0 = torch.rand(1, 5, 6, 4, RES // 8, RES // 8) * 2 - 1
    oracle = _OracleUNet(sysm.unet, fold(x0), sched.alphas_cumprod, prediction_type)
    pipe = Zero1toGPipeline(oracle, sysm.condition, sched, InferenceConfig(num_inference_steps=10,
                                                                            guidance_scale=1.0, eta=0.0))
    noise = torch.randn_like(x0)
    cond = dm.eval_item(0)["cond_rgb"]
    got = pipe.sample(cond, latents=noise)
    # deterministic DDIM with an exact denoiser keeps the first step's implied noise to the end
    ab_first = sched.alphas_cumprod[int(sched.timesteps[0])]
    eps = (noise - ab_first.sqrt() * x0) / (1 - ab_first).sqrt()
    ab_end = sched.final_alpha_cumprod
    want = ab_end.sqrt() * x0 + (1 - ab_end).sqrt() * eps
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    if prediction_type == "v_prediction":  # the model folder's epsilon scheduler misses that end point
        from custom.zero1tog.inference import _read_scheduler_config, make_scheduler

        folder = make_scheduler(_read_scheduler_config(tiny_models))
        assert folder.config.prediction_type == "epsilon"
        wrong = Zero1toGPipeline(oracle, sysm.condition, folder, pipe.cfg).sample(cond, latents=noise)
        assert (wrong - want).abs().max() > 1e-3

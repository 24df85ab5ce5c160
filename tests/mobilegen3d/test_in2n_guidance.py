"""The InstructPix2Pix guidance on a tiny random model loaded with from_pretrained: deterministic edits, the
three-way classifier-free guidance and DDIM steps against a hand computation (and diffusers' DDIMScheduler driven the
way Instruct-NeRF2NeRF drives it), and clear errors for missing or wrong weights."""

import os
import shutil

import pytest
import torch


def _guidance(mg, folder, **cfg):
    return mg.ip2p.InstructPix2PixGuidance({"pretrained_model_name_or_path": folder, **cfg}, device="cpu")


def _images(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, h, w, 3, generator=g), torch.rand(1, h, w, 3, generator=g)


def test_edit_changes_the_image_and_is_deterministic_for_a_generator(mg, tiny_ip2p):
    guidance = _guidance(mg, tiny_ip2p)
    assert guidance.weights_dtype == torch.float32 and guidance.unet.config.in_channels == 8
    emb = guidance.encode_prompt("turn it into a bronze statue")
    assert emb.shape == (3, 77, 32) and torch.equal(emb[1], emb[2]) and not torch.equal(emb[0], emb[1])
    assert guidance.encode_prompt("turn it into a bronze statue") is emb  # cached
    render, photo = _images(20, 28)  # not multiples of 8: resized for the VAE and back

    def edit(seed):
        return guidance.edit_image(render, photo, emb, diffusion_steps=4, generator=torch.Generator().manual_seed(seed))

    a, b, c = edit(1), edit(1), edit(2)
    assert a.shape == render.shape and a.dtype == torch.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert torch.equal(a, b)  # same generator state: the same edit
    assert (a - c).abs().max() > 1e-3  # another seed: another starting timestep and noise
    assert (a - render).abs().mean() > 1e-3  # the edit changed the render
    guidance.release_text_encoder()
    assert guidance.encode_prompt("turn it into a bronze statue") is emb  # still cached
    with pytest.raises(RuntimeError, match="released"):
        guidance.encode_prompt("another prompt")


def test_three_way_guidance_and_ddim_steps_match_a_hand_computation(mg, tiny_ip2p):
    from diffusers import DDIMScheduler

    guidance = _guidance(mg, tiny_ip2p)
    emb = guidance.encode_prompt("make it snowy")
    render, photo = _images(16, 24, seed=1)
    calls = []

    def hook(module, args, kwargs, out):
        calls.append({"x": args[0].clone(), "t": args[1].clone(), "emb": kwargs["encoder_hidden_states"].clone(),
                      "eps": out[0].float().clone()})

    handle = guidance.unet.register_forward_hook(hook, with_kwargs=True)
    gs, igs = 7.5, 1.5
    try:
        out, details = guidance.edit_image(render, photo, emb, t_min=0.3, t_max=0.9, diffusion_steps=2,
                                           guidance_scale=gs, image_guidance_scale=igs,
                                           generator=torch.Generator().manual_seed(3), return_info=True)
    finally:
        handle.remove()
    T, timesteps = details["T"], details["timesteps"]
    assert 300 <= T <= 900 and timesteps == [T // 2 + 1, 1] and len(calls) == 2  # "leading" spacing, offset 1

    # the same draws by hand: T, the render's posterior sample (scaled), the noise; the photo's posterior mode
    gen = torch.Generator().manual_seed(3)
    assert guidance.sample_T(0.3, 0.9, gen) == T
    with torch.no_grad():
        z = guidance.vae.encode(2 * render.permute(0, 3, 1, 2) - 1).latent_dist
        z = (z.mean + z.std * torch.randn(z.mean.shape, generator=gen)) * 0.18215
        noise = torch.randn(z.shape, generator=gen)
        cond = guidance.vae.encode(2 * photo.permute(0, 3, 1, 2) - 1).latent_dist.mode()  # unscaled
    alphas = guidance.scheduler.alphas_cumprod
    x = alphas[timesteps[0]].sqrt() * z + (1 - alphas[timesteps[0]]).sqrt() * noise

    # diffusers' DDIM, configured and driven as Instruct-NeRF2NeRF does (num_train_timesteps set to T)
    ref = DDIMScheduler.from_config(guidance.scheduler.config)
    ref.config.num_train_timesteps = T
    ref.set_timesteps(2)
    assert [int(t) for t in ref.timesteps] == timesteps
    for k, t in enumerate(timesteps):
        c = calls[k]
        assert torch.allclose(c["x"][:, :4], torch.cat([x] * 3), atol=1e-5)  # the same noisy latents in 3 rows
        assert torch.allclose(c["x"][:1, 4:], cond, atol=1e-5) and torch.allclose(c["x"][1:2, 4:], cond, atol=1e-5)
        assert torch.equal(c["x"][2:, 4:], torch.zeros_like(cond))  # unconditional image: zeros
        assert torch.equal(c["emb"], emb)  # [instruction, "", ""]
        assert c["t"].tolist() == [t] * 3
        eps_text, eps_image, eps_uncond = c["eps"].chunk(3)
        eps = eps_uncond + gs * (eps_text - eps_image) + igs * (eps_image - eps_uncond)
        t_prev = t - T // 2
        a_t = alphas[t]
        a_prev = alphas[t_prev] if t_prev >= 0 else guidance.scheduler.final_alpha_cumprod
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x_next = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        assert torch.allclose(ref.step(eps, t, x).prev_sample, x_next, atol=1e-5)
        x = x_next
    with torch.no_grad():
        expected = (guidance.vae.decode(x / 0.18215).sample * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_ddim_schedule_follows_instruct_nerf2nerf(mg, tiny_ip2p):
    ddim = mg.ip2p.ddim_timesteps
    assert ddim(500, 20) == [19 * 25 + 1 - 25 * i for i in range(20)]
    assert ddim(20, 20) == list(range(20, 0, -1))
    assert ddim(7, 20) == list(range(7, 0, -1))  # more steps than timesteps: stride 1
    guidance = _guidance(mg, tiny_ip2p)
    cfg = guidance.scheduler.config  # the repository ships an Euler config: DDIM settings are Instruct-NeRF2NeRF's
    assert (cfg.timestep_spacing, cfg.clip_sample, cfg.set_alpha_to_one, cfg.steps_offset) == ("leading", False,
                                                                                                  False, 1)
    eps = torch.randn(6, 4, 2, 2)
    guided = mg.ip2p.ip2p_guided_noise(eps, 7.5, 1.5)
    assert torch.allclose(guided, eps[4:] + 7.5 * (eps[:2] - eps[2:4]) + 1.5 * (eps[2:4] - eps[4:]))


def test_missing_or_wrong_weights_are_reported_clearly(mg, tiny_ip2p, tmp_path):
    from threestudio.utils.weights import PretrainedWeightsError, save_random_stable_diffusion

    key = "system.guidance.pretrained_model_name_or_path"
    missing = str(tmp_path / "no-ip2p")
    with pytest.raises(PretrainedWeightsError) as e:
        _guidance(mg, missing)
    text = str(e.value)
    assert "Pretrained weights not available" in text and key in text and missing in text
    assert "huggingface-cli download timbrooks/instruct-pix2pix" in text

    partial = tmp_path / "partial"
    shutil.copytree(tiny_ip2p, partial)
    shutil.rmtree(partial / "unet")
    with pytest.raises(PretrainedWeightsError, match=r"missing unet/ \(no such folder\)"):
        mg.ip2p.InstructPix2PixGuidance.preflight({"pretrained_model_name_or_path": str(partial)})

    sd = save_random_stable_diffusion(str(tmp_path / "sd"), preset="tiny")  # a text-to-image model: 4 channels
    with pytest.raises(PretrainedWeightsError, match="is not an InstructPix2Pix model: its UNet takes 4 input"):
        _guidance(mg, sd)
    assert os.path.isdir(tiny_ip2p)

"""CUDA-only checks (``pytest -m gpu tests/mvdream``): the UNet parity on the GPU, and the compiled guidance
(inductor, CUDA graphs) against eager with no recompiles. Not run on CPU machines."""

import pytest
import torch

from tests.mvdream.conftest import data_file

pytestmark = pytest.mark.gpu


def test_unet_parity_on_cuda():
    from threestudio.models.diffusion.mvdream.keymap import unet_keymap
    from threestudio.models.diffusion.mvdream.unet import MultiViewUNet

    d = torch.load(data_file("parity_tiny.pt"), weights_only=True)
    cfg = {k: v for k, v in d["config"].items() if k != "class_name"}
    model = MultiViewUNet.from_ldm_config(cfg).eval()
    model.unet.load_state_dict(unet_keymap(cfg).convert(d["state_dict"]), strict=True)
    model = model.cuda()
    args = [d[k].cuda() for k in ("x", "timesteps", "context", "camera")]
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            out = model(*args, num_frames=4).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert (out - d["output"]).abs().max() < 1e-4
    with torch.no_grad():
        half = model.half()(*[a.half() if a.is_floating_point() else a for a in args], num_frames=4).float().cpu()
    assert (half - d["output"]).abs().max() < 3e-2 * d["output"].abs().max()


def test_compiled_guidance_matches_eager_without_recompiles(tiny_mvdream):
    import threestudio
    from torch._dynamo.utils import counters

    from threestudio.models.prompt_processors.base import PromptProcessorOutput

    torch._dynamo.reset()
    e = torch.randn(1, 77, 64)
    pu = PromptProcessorOutput(e, torch.randn(1, 77, 64), e.expand(4, -1, -1).clone(),
                               torch.randn(4, 77, 64)).to("cuda")
    cfg = {"pretrained_model_name_or_path": tiny_mvdream.ckpt, "image_size": 64, "guidance_scale": 7.5}
    eager = threestudio.find("mvdream-sds-guidance")({**cfg, "compile": False}, "cuda")
    comp = threestudio.find("mvdream-sds-guidance")({**cfg, "compile": True}, "cuda")
    elev = torch.full((4,), 15.0, device="cuda")
    azim = torch.arange(4, device="cuda") * 90.0
    dist = torch.full((4,), 2.0, device="cuda")
    lat = torch.randn(4, 8, 8, 4, device="cuda", requires_grad=True)  # latents: the UNet part, no VAE sampling
    rgb = torch.rand(4, 32, 32, 3, device="cuda", requires_grad=True)  # through the compiled VAE encode
    noise = torch.randn(4, 4, 8, 8, device="cuda")
    graphs = None
    for step, t in enumerate((900, 500, 100, 700)):
        lat.grad = None
        a = comp(lat, pu, elev, azim, dist, rgb_as_latents=True, t=t, noise=noise)
        a["loss_sds"].backward()
        ga = lat.grad.clone()
        lat.grad = None
        b = eager(lat, pu, elev, azim, dist, rgb_as_latents=True, t=t, noise=noise)
        b["loss_sds"].backward()
        # fp16 UNets, compiled (fused kernels) and eager, with CFG 7.5 amplifying their rounding differences:
        # compare whole gradients (a wrong camera, timestep or embedding row would be off by ~100%)
        rel = float((ga - lat.grad).norm() / lat.grad.norm())
        print(f"t={t}: compiled vs eager SDS gradient, relative error {rel:.2e}")
        assert rel < 0.1
        rgb.grad = None
        c = comp(rgb, pu, elev, azim, dist, t=t)
        c["loss_sds"].backward()
        assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
        if step == 0:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs  # t, noise and sampling change; nothing recompiles

"""On CUDA (``pytest -m gpu``): the student trains under fp16 autocast with a GradScaler (as ``trainer.precision:
16-mixed`` runs it) and its float16 inference matches float32."""

import pytest
import torch
import torch.nn.functional as F

from .conftest import load_ext, orbit_c2w
from .test_nelf import tiny_student

load_ext()


@pytest.mark.gpu
def test_fp16_training_and_half_inference_on_cuda():
    from custom.mobilegen3d.nelf import fold_batchnorm

    torch.manual_seed(0)
    s = tiny_student().cuda()
    c2w = orbit_c2w(2).cuda()
    target = torch.rand(2, 32, 48, 3, device="cuda")
    rays_o = c2w[:, None, None, :3, 3].expand(2, 4, 6, 3).contiguous()
    rays_d = F.normalize(torch.randn(2, 4, 6, 3, device="cuda"), dim=-1)
    opt = torch.optim.Adam(s.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    for _ in range(10):
        with torch.autocast("cuda", dtype=torch.float16):
            out = s.forward_rays(rays_o, rays_d, perturb=True)
            loss = F.mse_loss(out.float(), target)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert out.dtype == torch.float16 and torch.isfinite(loss)
    s.eval()
    with torch.no_grad():
        ref = s.render(c2w)
        half = fold_batchnorm(s).half()
        x = s.embedder()(s.sampler()(c2w)).half()
        got = half(x).permute(0, 2, 3, 1).float()
    mse = float(((got - ref) ** 2).mean())
    assert -10 * torch.log10(torch.tensor(mse)) > 40


@pytest.mark.gpu
def test_cuda_graph_frame_renderer_replays_new_cameras():
    """The recorded graph renders each new camera as the eager float16 path does (not the camera it was recorded
    with), and refuses another batch size with a message that says what to do."""
    from custom.mobilegen3d.nelf import FrameRenderer

    torch.manual_seed(0)
    s = tiny_student().cuda().eval()
    graphed = FrameRenderer(s, torch.float16, batch=2, cuda_graph=True)
    eager = FrameRenderer(s, torch.float16, batch=2, cuda_graph=False)
    assert graphed.graph is not None and eager.graph is None
    for k in range(3):
        c2w = orbit_c2w(2 + k)[k:k + 2].cuda()
        got = graphed(c2w).clone()
        assert torch.allclose(got, eager(c2w), atol=1e-3)
        with torch.no_grad():
            ref = s.render(c2w)
        assert float((got - ref).abs().max()) < 0.02
    with pytest.raises(ValueError, match="make another with batch=1"):
        graphed(orbit_c2w(1).cuda())

"""On a CUDA GPU: the generators, background and renderer give the CPU results (tiny sizes), and a full-size
3dconv-net batch of 2 equals two batch-1 calls."""

import pytest
import torch

from .test_generators import TINY, _gen


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full fp32 on the GPU (convolutions default to TF32, ~1e-3 relative error per layer)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(TINY))
def test_generators_and_renderer_on_cuda_match_cpu(amz, name):
    import threestudio

    from custom.amortized.data import CameraSettings, rays_for, turntable_cameras

    g = _gen(name).eval()
    if name == "hyper-ingp":
        with torch.no_grad():
            for p in g.encoding.parameters():
                p.normal_(0, 0.1)
    mat = threestudio.find("no-material", "material")({})
    bg = threestudio.find("neural-environment-map", "background")({})
    outs = []
    pooled, tokens, noise = torch.randn(2, 16), torch.randn(2, 6, 16), torch.randn(2, 8)
    cams = turntable_cameras(2, CameraSettings())
    ro, rd = rays_for(cams["c2w"], cams["fovy_rad"], 16, 16)
    for dev in ("cpu", "cuda"):
        torch.manual_seed(0)
        g.to(dev), mat.to(dev), bg.to(dev)
        r = threestudio.find("amortized-volsdf-renderer", "renderer")({"n_proposal": 32, "n_importance": 16},
                                                                       geometry=g, material=mat, background=bg).eval()
        cache = g.generate(pooled.to(dev), tokens.to(dev), noise.to(dev))
        out = r(cache, ro.to(dev), rd.to(dev), n_view=1, need_normal=True)
        outs.append({k: v.float().cpu() for k, v in out.items() if v.dim() == 4})
    for k in outs[0]:
        assert torch.allclose(outs[0][k], outs[1][k], atol=2e-3), k


@pytest.mark.gpu
def test_full_size_3dconv_batches_on_cuda(amz):
    import threestudio

    g = threestudio.find("3dconv-net", "geometry")({}).cuda().eval()
    pooled, noise = torch.randn(2, 1024, device="cuda"), torch.randn(2, 64, device="cuda")
    with torch.no_grad():
        both = g.generate(pooled, None, noise)
        one = torch.cat([g.generate(pooled[i : i + 1], None, noise[i : i + 1]) for i in range(2)])
    assert both.shape == (2, 32, 128, 128, 128)
    assert torch.allclose(both, one, atol=1e-3, rtol=1e-3)

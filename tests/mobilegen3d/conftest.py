import math
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXT = os.path.join(REPO, "custom", "mobilegen3d")


def load_ext():
    """Import the extension as launch.py does (package ``custom.mobilegen3d``)."""
    from threestudio.utils.extensions import import_extension

    import_extension(EXT, namespace="custom")
    import custom.mobilegen3d as mg
    import custom.mobilegen3d.ip2p  # noqa: F401  (the package imports its modules lazily; tests use mg.ip2p)

    return mg


@pytest.fixture(scope="session")
def mg():
    return load_ext()


def orbit_c2w(n, radius=2.0, elevation_deg=20.0):
    """n OpenGL cameras on a circle around the origin, looking at it (z up)."""
    from threestudio.ops.cameras import look_at

    az = torch.arange(n, dtype=torch.float32) * (2 * math.pi / max(n, 1))
    el = math.radians(elevation_deg)
    eye = torch.stack([radius * math.cos(el) * torch.cos(az), radius * math.cos(el) * torch.sin(az),
                       torch.full_like(az, radius * math.sin(el))], -1)
    return look_at(eye)


def analytic_rgb(c2w, height, width, intrinsics):
    """A smooth light field: the colour of a ray is 0.5 + 0.4 * its unit world direction (plus a stripe)."""
    from threestudio.ops.cameras import get_ray_directions, get_rays

    fx, fy, cx, cy = intrinsics
    _, d = get_rays(get_ray_directions(height, width, (fx, fy), (cx, cy)), c2w)
    return (0.5 + 0.4 * d + 0.05 * torch.sin(6.0 * d[..., :1])).clamp(0, 1)


def make_pseudo(folder, n=6, lr=(4, 6), s=8, holdout=(0,), random=False, seed=0, source="tests"):
    """A complete pseudo-data folder of n views (h x w rays, s x upsampling) written with PseudoDataWriter."""
    from custom.mobilegen3d.pseudo_data import PseudoDataWriter

    load_ext()
    h, w = lr
    H, W = h * s, w * s
    intr = [0.9 * W, 0.9 * W, W / 2, H / 2]
    cams = orbit_c2w(n)
    g = torch.Generator().manual_seed(seed)
    writer = PseudoDataWriter(str(folder), n, H, W, h, w, intr, near=0.5, far=3.5, source=source)
    for i in range(n):
        img = torch.rand(H, W, 3, generator=g) if random else analytic_rgb(cams[i], H, W, intr)
        writer.write(i, img, cams[i])
    writer.close(holdout=list(holdout) if holdout is not None else None)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_ip2p(tmp_path_factory):
    """A tiny random InstructPix2Pix folder (save_pretrained), loaded through from_pretrained like real weights."""
    from threestudio.utils.weights import save_random_instruct_pix2pix

    return save_random_instruct_pix2pix(str(tmp_path_factory.mktemp("tiny-ip2p")))

"""Fixtures for the GET3D + NADA extension: its package (imported like launch.py does), the reference data in
../shared/data/get3d (tests skip with a message when it is absent), a tiny random CLIP and tiny generators."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("THREESTUDIO_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))
GET3D_DATA = os.path.abspath(os.path.join(DATA, "get3d"))

TINY_G = dict(z_dim=32, w_dim=32, tri_plane_resolution=16, channel_base=256, channel_max=32, tet_res=16,
              img_resolution=48)


def get3d():
    from threestudio.utils.extensions import import_extension

    import_extension(os.path.join(REPO, "custom", "get3d"), namespace="custom")
    import custom.get3d as pkg

    return pkg


def data_file(name):
    path = os.path.join(GET3D_DATA, name)
    if not os.path.isfile(path):
        pytest.skip(f"GET3D reference data {name} not found in {GET3D_DATA} (set THREESTUDIO_SHARED_DATA to the "
                    f"folder holding get3d/)")
    return path


@pytest.fixture(scope="session")
def pkg():
    return get3d()


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    get3d()  # registers the extension, so custom.get3d imports
    from custom.get3d.clip_loss import save_random_clip

    return save_random_clip(str(tmp_path_factory.mktemp("clip") / "tiny-clip"))


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

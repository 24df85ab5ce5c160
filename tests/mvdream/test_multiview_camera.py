"""``multiview-camera``: groups of n_view views per object, equally spaced azimuths, shared elevation / fov /
distance, relative radius; cameras in the convention MVDream's camera embedding was trained with."""

import json
import math

import pytest
import torch

import threestudio
from tests.mvdream.conftest import data_file
from threestudio.models.guidance.mvdream.score import camera_condition


def dm(**cfg):
    return threestudio.find("multiview-camera", "data")(cfg)


def test_batches_are_objects_of_equally_spaced_views():
    d = dm(batch_size=[8, 4], height=[8, 16], width=[8, 16], resolution_milestones=[5], n_view=4,
           elevation_range=[0.0, 30.0], fovy_range=[15.0, 60.0], camera_distance_range=[0.8, 1.0])
    d.do_update_step(0, 0)
    b = d.draw_train_batch(torch.device("cpu"))
    assert b["rays_o"].shape == (8, 8, 8, 3) and b["c2w"].shape == (8, 4, 4) and b["n_view"] == 4
    for k in range(2):
        sl = slice(4 * k, 4 * k + 4)
        az = b["azimuth"][sl]
        assert torch.allclose(torch.diff(az), torch.full((3,), 90.0), atol=1e-4)  # 360 / n_view apart
        assert -180.0 <= float(az[0]) < -90.0  # offset u ~ U(0, 1) over the first quarter of [-180, 180)
        for key in ("elevation", "fovy", "camera_distances"):
            v = b[key][sl]
            assert torch.allclose(v, v[:1].expand(4)), key  # one per object
        e, f = float(b["elevation"][4 * k]), float(b["fovy"][4 * k])
        assert 0.0 <= e <= 30.0 and 15.0 <= f <= 60.0
        # relative radius: distance * tan(fovy / 2) is drawn from the range
        rel = float(b["camera_distances"][4 * k]) * math.tan(math.radians(f) / 2)
        assert 0.8 - 1e-5 <= rel <= 1.0 + 1e-5
    assert not torch.allclose(b["azimuth"][:4], b["azimuth"][4:])  # objects differ
    # cameras sit at the drawn spherical coordinates and look at the origin
    assert torch.allclose(b["camera_positions"].norm(dim=-1), b["camera_distances"], atol=1e-4)
    assert torch.allclose(b["c2w"][:, :3, 3], b["camera_positions"])
    back = b["c2w"][:, :3, 2]
    assert torch.allclose(back, torch.nn.functional.normalize(b["camera_positions"], dim=-1), atol=1e-5)
    d.do_update_step(0, 5)
    b = d.draw_train_batch(torch.device("cpu"))
    assert b["rays_o"].shape == (4, 16, 16, 3)


def test_absolute_radius_and_bad_batch_size():
    d = dm(batch_size=4, relative_radius=False, camera_distance_range=[2.0, 2.5], height=4, width=4)
    b = d.draw_train_batch(torch.device("cpu"))
    assert ((b["camera_distances"] >= 2.0) & (b["camera_distances"] <= 2.5)).all()
    with pytest.raises(ValueError, match="multiple of data.n_view = 4"):
        dm(batch_size=6)
    # evaluation is random-camera's turntable
    assert len(d.val_dataloader()) == 4


def test_camera_condition_matches_mvdream_convention():
    """MVDream's t2i cameras (elevation 15, its azimuths 90..360 deg) are our cameras at azimuths 0, 90, 180, 270
    (z up, OpenGL camera axes), with the translation on the unit sphere."""
    spec = json.load(open(data_file("state_dict_shapes.json")))
    ref = torch.tensor(spec["example_camera_t2i_default"]["values"])
    from threestudio.ops.cameras import c2w_from_spherical

    c2w = c2w_from_spherical(torch.full((4,), 15.0), torch.tensor([0.0, 90, 180, 270]), torch.full((4,), 3.0))
    assert torch.allclose(camera_condition(c2w), ref, atol=1e-5)
    # the data module's cameras are exactly these functions of its angles (what the guidance rebuilds when a
    # system does not pass c2w)
    b = dm(batch_size=8, height=4, width=4).draw_train_batch(torch.device("cpu"))
    assert torch.equal(b["c2w"], c2w_from_spherical(b["elevation"], b["azimuth"], b["camera_distances"]))
    # "extrinsics" keeps the translation as is
    assert torch.allclose(camera_condition(c2w, "extrinsics")[:, 3], 3 * ref[:, 3], atol=1e-5)

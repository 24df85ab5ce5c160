"""Ground-truth splatters and training data: make_gt_splatters.py on our procedural meshes writes renders and a
fitted splatter per object without touching the mesh folder; the stored splatter, rendered through our gaussian
rasterizer, reproduces the object's held-out views (PSNR >= 28 dB), also after the fp16 attribute-image round
trip; the data module serves batches of the documented shapes."""

import math
import os

import pytest
import torch

from tests.zero1tog.conftest import load_ext

load_ext()
from custom.zero1tog import gt_fit, make_data, meshes, store  # noqa: E402
from custom.zero1tog import splatter as S  # noqa: E402

RES = 32  # splatter and render side per view (the method's is 128)
STEPS = 100
N_OBJECTS = 2  # object 0 is fitted; object 1 keeps its initialisation (steps=0), for the data module's split

pytestmark = pytest.mark.slow  # the fit runs our PyTorch reference rasterizer on the CPU


def snapshot(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    base = tmp_path_factory.mktemp("z1g")
    mesh_dir = str(base / "meshes")
    meshes.make_procedural_meshes(mesh_dir, N_OBJECTS, seed=0, resolution=40)
    before = snapshot(mesh_dir)
    out = str(base / "data")
    cfg = make_data.MakeConfig(fit=gt_fit.FitConfig(resolution=RES, steps=STEPS, views_per_step=4, tile_size=8),
                               n_extra=12, n_heldout=4)
    quick = make_data.MakeConfig(fit=gt_fit.FitConfig(resolution=RES, steps=0, tile_size=8), n_extra=12, n_heldout=4)
    store.claim(out)
    mesh1 = os.path.join(mesh_dir, "proc_00001.ply")
    stats = {"proc_00001": make_data.make_object(mesh1, os.path.join(out, "proc_00001"), quick)}
    os.rename(mesh1, os.path.join(str(base), "proc_00001.ply"))  # make_dataset sees object 0 only
    stats.update(make_data.make_dataset(mesh_dir, out, cfg, show_progress=False, log=lambda s: None))
    os.rename(os.path.join(str(base), "proc_00001.ply"), mesh1)
    return {"mesh_dir": mesh_dir, "before": before, "out": out, "cfg": cfg, "stats": stats}


def heldout_psnr(obj, splatter):
    cams = obj["cameras"]
    out = S.render_splatter(splatter, obj["c2w"]["heldout"], math.radians(cams["fovy_deg"]), RES, RES,
                            (1.0, 1.0, 1.0), backend="torch", tile_size=8)
    return gt_fit.psnr(out["rgb"].clamp(0, 1), gt_fit.composite(obj["rgba"]["heldout"], (1.0, 1.0, 1.0)))


def test_fitted_splatters_reproduce_heldout_views(made):
    names = store.list_objects(made["out"])
    assert names == [f"proc_{i:05d}" for i in range(N_OBJECTS)]
    for name in names[:1]:
        obj = store.read_object(os.path.join(made["out"], name))
        sp = obj["splatter"]
        assert sp.shape == (6, 14, RES, RES)
        p = heldout_psnr(obj, sp)
        st = made["stats"][name]
        print(f"{name}: held-out PSNR {p:.2f} dB (init {st['psnr_heldout_init']:.2f}), supervision "
              f"{st['psnr_supervision']:.2f} dB, {st['seconds']:.1f} s")
        assert p >= 28.0
        assert p > st["psnr_heldout_init"] + 5.0  # the optimisation did the work, not the initialisation
        # through the attribute images in fp16 (what the VAE sees) the splatter renders the same
        img16 = S.splatter_to_attribute_images(sp, "wonder3d").half().float()
        assert heldout_psnr(obj, S.attribute_images_to_splatter(img16, "wonder3d")) >= 28.0
        # a wrong camera convention (no OpenGL -> OpenCV flip) does not
        bad = obj["c2w"]["heldout"].clone()
        bad[:, :3, 1:3] *= -1
        wrong = S.render_splatter(sp, bad, math.radians(obj["cameras"]["fovy_deg"]), RES, RES, backend="torch")
        assert gt_fit.psnr(wrong["rgb"].clamp(0, 1), gt_fit.composite(obj["rgba"]["heldout"], (1, 1, 1))) < 20


def test_layout_cameras_and_the_mesh_folder_untouched(made):
    assert snapshot(made["mesh_dir"]) == made["before"]
    assert os.path.isfile(os.path.join(made["out"], store.OWNER_MARKER))
    obj = store.read_object(os.path.join(made["out"], "proc_00000"))
    cams = obj["cameras"]
    assert cams["view_set"] == "wonder3d" and cams["fovy_deg"] == 39.6
    c2w = obj["c2w"]["splatter"]
    # object frame: splatter view 0 at (0, 0, 1.5) with the identity rotation; the input view is view 0
    expect0 = torch.eye(4)
    expect0[2, 3] = 1.5
    assert torch.allclose(c2w[0], expect0, atol=1e-5)
    assert torch.allclose(obj["c2w"]["input"][0], expect0, atol=1e-5)
    # azimuths input + (0, 90, 180, 270, 30, 330) at the input elevation; all cameras look at the origin from 1.5
    az = torch.tensor(cams["views"]["splatter"]["azimuth_deg"])
    assert torch.allclose((az - az[0]) % 360, torch.tensor([0.0, 90, 180, 270, 30, 330]), atol=1e-4)
    assert len(set(cams["views"]["splatter"]["elevation_deg"])) == 1
    for g in ("splatter", "extra", "heldout"):
        pos = obj["c2w"][g][:, :3, 3]
        assert torch.allclose(pos.norm(dim=-1), torch.full((len(pos),), 1.5), atol=1e-4)
        assert torch.allclose(-obj["c2w"][g][:, :3, 2], -pos / 1.5, atol=1e-4)
    assert obj["rgba"]["splatter"].shape == (6, RES, RES, 4) and obj["rgba"]["extra"].shape[0] == 12
    a = obj["rgba"]["splatter"][..., 3]
    assert 0.1 < a.mean() < 0.7 and a.max() == 1.0 and a[:, 0, 0].max() == 0.0  # an object, framed, on empty bg


def test_rerun_skips_complete_objects_and_refuses_unsafe_folders(made, tmp_path):
    # object 0 is complete with these settings and skipped; object 1 was made with others and would be refitted
    logs = []
    mesh1 = os.path.join(made["mesh_dir"], "proc_00001.ply")
    os.rename(mesh1, str(tmp_path / "proc_00001.ply"))
    try:
        again = make_data.make_dataset(made["mesh_dir"], made["out"], made["cfg"], show_progress=False,
                                       log=logs.append)
    finally:
        os.rename(str(tmp_path / "proc_00001.ply"), mesh1)
    assert again == {} and logs == ["skip proc_00000.ply (complete)"]
    from custom.zero1tog.scripts import make_gt_splatters as cli  # noqa: F401  (importable)

    assert cli.main([made["mesh_dir"], os.path.join(made["mesh_dir"], "out"), "--no-progress"]) == 2
    assert not os.path.exists(os.path.join(made["mesh_dir"], "out"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("mine")
    assert cli.main([made["mesh_dir"], str(foreign), "--no-progress"]) == 2
    assert os.listdir(foreign) == ["x.txt"]


def test_data_module_batches(made):
    import threestudio

    dm = threestudio.find("zero1tog-splatter-data")({"dataroot": made["out"], "batch_size": 3,
                                                     "n_supervision_views": 2, "n_val_objects": 1})
    assert dm.names == ["proc_00000", "proc_00001"] and dm.val_indices == [1]
    b = dm.draw_train_batch(torch.device("cpu"))
    assert b["splatter"].shape == (3, 6, 14, RES, RES)
    assert b["attributes"].shape == (3, 5, 6, 3, RES, RES) and b["attributes"].abs().max() <= 1
    assert b["cond_rgb"].shape == (3, 3, RES, RES) and b["views_rgb"].shape == (3, 6, 3, RES, RES)
    assert b["sup_rgb"].shape == (3, 2, 3, RES, RES) and b["sup_c2w"].shape == (3, 2, 4, 4)
    assert torch.equal(b["index"], torch.zeros(3, dtype=torch.long))  # only object 0 trains
    assert torch.allclose(b["fovy"], torch.full((3,), math.radians(39.6)))
    # wonder3d: the condition is splatter view 0; images are composited on white
    assert torch.allclose(b["cond_rgb"], b["views_rgb"][:, 0])
    bg = b["views_alpha"] == 0
    assert bg.any() and torch.all(b["views_rgb"][bg.expand_as(b["views_rgb"])] == 1.0)
    # the attribute images are the stored splatter's, with the configured mapping
    obj = store.read_object(os.path.join(made["out"], "proc_00000"))
    assert torch.equal(b["attributes"][0], S.splatter_to_attribute_images(obj["splatter"], "wonder3d"))
    # the batch stream is the module's saved generator: same state, same views
    state = dm.state_dict()
    b1 = dm.draw_train_batch(torch.device("cpu"))
    dm.load_state_dict(state)
    assert torch.equal(dm.draw_train_batch(torch.device("cpu"))["sup_c2w"], b1["sup_c2w"])
    (item,) = list(dm.val_dataloader())
    assert item["name"] == "proc_00001" and item["heldout_rgb"].shape == (1, 4, 3, RES, RES)
    with pytest.raises(ValueError, match="n_val_objects"):
        threestudio.find("zero1tog-splatter-data")({"dataroot": made["out"], "n_val_objects": 2})

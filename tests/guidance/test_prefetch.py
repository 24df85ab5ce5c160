"""Prefetching the next training step's samples (TrainRayStage.prefetch: BaseDataModule.prefetch_train_batch and
NeRFVolumeRenderer.prepare_samples, whose samples travel in the next step's RenderRequest;
``system.renderer.prefetch_samples``, on by default). On CUDA this runs on a side stream; here the same logic runs on
the CPU, which is what these tests hold: the same batches, the same checkpoints, the prefetched samples used exactly
when they should be, and the samples chosen with the parameters of the step before."""

import os

import pytest
import torch

from tests.guidance.test_text_to_3d_recipes import REPO, SMALL, launch


def camera_module(**cfg):
    import threestudio

    return threestudio.find("random-camera")({"width": 16, "height": 16, **cfg})


def test_prefetched_batch_is_the_one_the_step_would_draw_and_checkpoints_ignore_it():
    from threestudio.data.base import DRAW_KEY

    dm = camera_module()
    before = dm.state_dict()
    normal = dm.on_after_batch_transfer({DRAW_KEY: 0}, 0)  # no trainer: the batch of step 0
    dm.load_state_dict(before)

    early = dm.prefetch_train_batch(torch.device("cpu"), 0, 0)
    assert torch.equal(dm.state_dict()["stream"]["generator"], before["stream"]["generator"])  # not yet consumed
    assert dm.prefetch_train_batch(torch.device("cpu"), 0, 0) is early  # asked twice: drawn once
    got = dm.on_after_batch_transfer({DRAW_KEY: 0}, 0)
    assert got is early
    for k in ("rays_o", "rays_d", "c2w", "elevation", "azimuth", "light_positions"):
        assert torch.equal(got[k], normal[k]), k
    assert torch.equal(dm.state_dict()["stream"]["generator"], dm.stream.state_dict()["generator"])

    # drawn for another step (e.g. with gradient accumulation): dropped, and the generator rewound
    dm.load_state_dict(before)
    dm.prefetch_train_batch(torch.device("cpu"), 0, 7)
    again = dm.on_after_batch_transfer({DRAW_KEY: 0}, 0)
    assert torch.equal(again["rays_o"], normal["rays_o"])


def small_renderer(**cfg):
    import threestudio

    geometry = threestudio.find("implicit-volume")({
        "radius": 1.0, "density_bias": "blob_magic3d", "density_activation": "softplus",
        "pos_encoding_config": {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2,
                                "log2_hashmap_size": 12, "base_resolution": 4, "per_level_scale": 1.5},
        "mlp_network_config": {"otype": "VanillaMLP", "activation": "ReLU", "n_neurons": 16, "n_hidden_layers": 1}})
    material = threestudio.find("no-material")({})
    background = threestudio.find("solid-color")({})
    renderer = threestudio.find("nerf-volume-renderer")(
        {"radius": 1.0, "num_samples_per_ray": 64, "occ_grid_resolution": 8, "prefetch_samples": True, **cfg},
        geometry=geometry, material=material, background=background)
    renderer.train()
    return renderer, geometry


def rays(n, seed):
    g = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 2.0
    d = torch.nn.functional.normalize(-o + 0.3 * torch.randn(n, 3, generator=g), dim=-1)
    return o, d


def test_renderer_uses_samples_chosen_with_the_parameters_at_prefetch_time(monkeypatch):
    from threestudio.models.renderers.base import RenderRequest

    renderer, geometry = small_renderer()
    renderer.update_step(0, 0)  # fills the grid
    calls = []
    orig = renderer._sample
    monkeypatch.setattr(renderer, "_sample", lambda o, d: calls.append(1) or orig(o, d))
    o, d = rays(64, 0)

    torch.manual_seed(1)
    prepared = renderer.prepare_samples(o, d)
    with torch.no_grad():
        expected = prepared.samples
        for p in geometry.parameters():  # an optimizer step between the prefetch and the forward
            p.add_(0.5)
    torch.manual_seed(1)
    fresh = orig(o, d)  # what the forward would select now: a different set
    assert fresh[0].shape != expected[0].shape or not torch.equal(fresh[1], expected[1])

    calls.clear()
    out = renderer.render(RenderRequest(o, d, samples=prepared))
    assert calls == []  # the prepared samples were used
    assert torch.equal(out["ray_indices"], expected[0]) and torch.equal(out["t_points"], 0.5 * (expected[1] + expected[2]))

    # a request without samples, or a grid refresh since they were prepared: sampled afresh
    renderer.render(RenderRequest(o, d))
    assert calls == [1]
    prepared = renderer.prepare_samples(o, d)
    renderer.update_step(0, renderer.cfg.occ_update_interval)  # the next grid refresh
    calls.clear()
    renderer.render(RenderRequest(o, d, samples=prepared))
    assert calls == [1]
    # evaluation never uses prepared samples
    prepared = renderer.prepare_samples(o, d)
    renderer.eval()
    calls.clear()
    with torch.no_grad():
        renderer(o, d, samples=prepared)
    assert calls == [1]
    assert not renderer.can_prepare_samples()


def test_stage_puts_prefetched_samples_into_the_request_of_their_step_only():
    from types import SimpleNamespace

    from threestudio.systems.train_stage import TrainRayStage

    renderer, _ = small_renderer()
    renderer.update_step(0, 0)
    dm = camera_module(camera_distance_range=[2.0, 2.0])
    trainer = SimpleNamespace(datamodule=dm, global_step=0, current_epoch=0, max_steps=3)
    stage = TrainRayStage(renderer)
    batch0 = dm.draw_train_batch(torch.device("cpu"))
    first = stage.request(batch0, 0, normals=False)
    assert first.samples is None and first.normals is False and first.rays_o is batch0["rays_o"]

    assert stage.prefetch(trainer, torch.device("cpu"))  # step 1's batch and samples, during step 0
    batch1 = dm.prefetch_train_batch(torch.device("cpu"), 0, 1)  # what the loader hands step 1: the same draw
    req = stage.request(batch1, 1)
    assert req.samples is not None and req.samples.grid_version == renderer._grid_version
    assert stage.request(batch1, 1).samples is None  # used once

    trainer.global_step = 1
    assert stage.prefetch(trainer, torch.device("cpu"))
    assert stage.request(batch1, 3).samples is None  # not the step they were drawn for: dropped
    trainer.global_step = 2  # the last step (max_steps 3): nothing follows
    assert not stage.prefetch(trainer, torch.device("cpu"))
    renderer.eval()
    trainer.global_step = 0
    assert not stage.prefetch(trainer, torch.device("cpu"))  # the renderer says no outside training
    renderer.train()
    trainer.datamodule = None
    assert not stage.prefetch(trainer, torch.device("cpu"))  # no data module that can draw ahead


def test_prefetch_is_on_by_default_in_training_and_can_be_turned_off():
    import threestudio

    assert threestudio.find("nerf-volume-renderer").Config().prefetch_samples is True
    renderer, _ = small_renderer()
    assert renderer.can_prepare_samples()
    renderer.eval()
    assert not renderer.can_prepare_samples()  # evaluation renders never prefetch
    renderer, _ = small_renderer(prefetch_samples=False)
    assert not renderer.can_prepare_samples()


def run_recording(tmp_path, tiny_sd, monkeypatch, name, extra):
    """Train dreamfusion-sd tiny; return the elevations each training step consumed and the prefetch hits."""
    from threestudio.models.renderers.nerf_volume_renderer import NeRFVolumeRenderer
    from threestudio.systems.dreamfusion import DreamFusion

    seen, hits = [], []
    orig_step, orig_take = DreamFusion.training_step, NeRFVolumeRenderer._usable

    def step(self, batch, batch_idx):
        seen.append((self.trainer.global_step, float(batch["elevation"][0])))
        return orig_step(self, batch, batch_idx)

    def take(self, prepared):
        got = orig_take(self, prepared)
        hits.append(got is not None)
        return got

    monkeypatch.setattr(DreamFusion, "training_step", step)
    monkeypatch.setattr(NeRFVolumeRenderer, "_usable", take)
    out = tmp_path / name
    rc = launch(["--config", os.path.join(REPO, "configs", "dreamfusion-sd.yaml"), "--train",
                 "system.prompt_processor.prompt=a red car", f"exp_root_dir={out}",
                 f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd}", *SMALL,
                 "trainer.max_steps=6", "trainer.val_check_interval=100", "checkpoint.every_n_train_steps=3",
                 "system.renderer.occ_update_interval=4", *extra], monkeypatch)
    assert rc == 0
    (trial,) = (out / "dreamfusion-sd").iterdir()
    return seen, hits, trial


@pytest.mark.parametrize("resume", [False, True])
def test_training_with_prefetch_sees_the_same_cameras_and_resumes_to_them(resume, tiny_sd, tmp_path, monkeypatch):
    ref, ref_hits, _ = run_recording(tmp_path, tiny_sd, monkeypatch, "off", ["system.renderer.prefetch_samples=false"])
    monkeypatch.undo()
    monkeypatch.setenv("THREESTUDIO_CACHE", str(tmp_path / "ts-cache"))
    seen, hits, trial = run_recording(tmp_path, tiny_sd, monkeypatch, "on", ["system.renderer.prefetch_samples=true"])
    assert seen == ref and [s for s, _ in seen] == list(range(6))
    assert not any(ref_hits)
    # step 0 has no prefetch; steps 4 (grid refresh at step 4) samples afresh; the others use the prefetch
    assert hits == [False, True, True, True, False, True]
    if resume:
        monkeypatch.undo()
        monkeypatch.setenv("THREESTUDIO_CACHE", str(tmp_path / "ts-cache"))
        from threestudio.systems.dreamfusion import DreamFusion

        resumed = []
        orig = DreamFusion.training_step

        def step(self, batch, batch_idx):
            resumed.append((self.trainer.global_step, float(batch["elevation"][0])))
            return orig(self, batch, batch_idx)

        monkeypatch.setattr(DreamFusion, "training_step", step)
        ckpt = [p for p in (trial / "ckpts").iterdir() if "step=3" in p.name or "step=000003" in p.name]
        assert ckpt, sorted(p.name for p in (trial / "ckpts").iterdir())
        rc = launch(["--train", "--resume", str(ckpt[0]), "trainer.max_steps=6", "trainer.enable_progress_bar=false"],
                    monkeypatch)
        assert rc == 0
        assert resumed == seen[3:]


def test_normals_only_for_steps_whose_losses_read_them(monkeypatch):
    # asd-mv-nerf asks for normals (return_comp_normal) for an orientation loss weighted 0 until step 10000: before
    # that the analytic normals' double backward would be spent on nothing, so the step's render request says so
    from threestudio.systems.dreamfusion import DreamFusion

    renderer, geometry = small_renderer(return_comp_normal=True, prefetch_samples=False)
    geometry.cfg.normal_type = "analytic"
    renderer.update_step(0, 0)
    asked = []
    orig = geometry.forward
    monkeypatch.setattr(geometry, "forward", lambda p, output_normal=False: asked.append(output_normal)
                        or orig(p, output_normal=output_normal))
    o, d = rays(32, 0)
    assert "comp_normal" in renderer(o, d) and asked[-1] is True  # as configured (normals None)
    out = renderer(o, d, normals=False)
    assert asked[-1] is False and "comp_normal" not in out and "normal" not in out
    renderer.eval()  # evaluation renders keep them (validation's normal images)
    with torch.no_grad():
        assert "comp_normal" in renderer(o, d) and asked[-1] is True
    renderer.train()
    out = renderer(o, d, normals=True)
    assert asked[-1] is True and out["normal"].shape == (out["t_dirs"].shape[0], 3)

    class System:  # what DreamFusion.uses_normals_in_training reads: the current loss weights
        def __init__(self, w):
            self.w = w

        def _lambda(self, name, default=0.0):
            return self.w.get(name, default)

    assert DreamFusion.uses_normals_in_training(System({"orient": 0.0, "sparsity": 20.0})) is False
    assert DreamFusion.uses_normals_in_training(System({"orient": 100.0})) is True
    assert DreamFusion.uses_normals_in_training(System({"eikonal": 0.1})) is True

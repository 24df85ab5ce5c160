"""Densification and pruning: our default strategy adds, splits, prunes and resets as configured, keeps the optimizer
state aligned, and makes the same decisions as gsplat's DefaultStrategy."""

import math

import pytest
import torch

from threestudio.ops.splatting.densify import DefaultDensifier


def make(device="cpu"):
    """Five gaussians: 0 high gradient + small -> duplicate; 1 high gradient + large -> split; 2 low gradient ->
    kept; 3 low opacity -> pruned; 4 invisible (radii 0) with a large gradient -> kept (no statistics)."""
    scales = torch.log(torch.tensor([[0.005] * 3, [0.05, 0.02, 0.02], [0.005] * 3, [0.005] * 3, [0.005] * 3]))
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.arange(15, dtype=torch.float32).reshape(5, 3) * 0.1),
        "scales": torch.nn.Parameter(scales),
        "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]] * 5)),
        "opacities": torch.nn.Parameter(torch.logit(torch.tensor([0.5, 0.6, 0.7, 0.001, 0.5]))),
        "sh0": torch.nn.Parameter(torch.rand(5, 1, 3)),
    }).to(device)
    opt = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    # one optimizer step so that the Adam moments exist (and are distinguishable per gaussian)
    for k, p in params.items():
        p.grad = torch.arange(1, 6, dtype=torch.float32, device=device).reshape(5, *[1] * (p.dim() - 1)).expand_as(p)
        opt[k].step()
    return params, opt


def info_with_grads(grad_px, radii, device="cpu", width=40, height=30):
    """A rasterizer meta dict whose means2d.grad holds the given pixel-space gradients [C, N, 2]."""
    m2 = torch.zeros_like(grad_px, requires_grad=True)
    (m2 * grad_px).sum().backward()
    return {"means2d": m2, "radii": radii.to(device), "width": width, "height": height, "n_cameras": grad_px.shape[0],
            "gaussian_ids": None}


def step_info(device="cpu"):
    g = torch.zeros(1, 5, 2, device=device)
    g[0, 0] = torch.tensor([1e-4, 0.0])  # NDC-normalised: 1e-4 * 40 / 2 = 2e-3 > 2e-4
    g[0, 1] = torch.tensor([0.0, 1e-4])  # 1e-4 * 30 / 2 = 1.5e-3
    g[0, 2] = torch.tensor([1e-6, 0.0])  # 2e-5 < 2e-4
    g[0, 4] = torch.tensor([1e-3, 0.0])
    radii = torch.tensor([[[3, 3], [5, 4], [2, 2], [2, 2], [0, 0]]], dtype=torch.int32)
    return info_with_grads(g, radii, device)


def test_duplicate_split_prune_as_configured():
    torch.manual_seed(0)
    params, opt = make()
    s = DefaultDensifier(refine_start_iter=5, refine_every=10, reset_every=1000, grow_grad2d=2e-4,
                         grow_scale3d=0.01, prune_opa=0.005)
    state = s.initialize_state(scene_scale=1.0)
    before = params["means"].detach().clone()
    parent_mean, parent_scale = before[1], params["scales"][1].detach().clone()
    exp_avg_kept = opt["sh0"].state[params["sh0"]]["exp_avg"][2].clone()
    info = step_info()
    s.step_pre_backward(params, opt, state, 10, info)
    counts = s.step_post_backward(params, opt, state, 10, info)
    assert counts == {"duplicated": 1, "split": 1, "pruned": 1, "reset": 0}
    # 5 + 1 duplicate + (2 - 1) split - 1 pruned = 6
    assert params["means"].shape == (6, 3) and params["sh0"].shape == (6, 1, 3)
    # layout: [kept originals without the split one: 0, 2, 3, 4 (3 then pruned) | duplicate of 0 | 2 split children]
    m = params["means"].detach()
    torch.testing.assert_close(m[:3], before[[0, 2, 4]])
    torch.testing.assert_close(m[3], before[0])  # the duplicate
    children = m[4:]
    assert not torch.equal(children[0], children[1])
    assert float((children - parent_mean).norm(dim=-1).max()) < 0.05 * 5  # sampled from the parent's gaussian
    torch.testing.assert_close(params["scales"][4:].detach(), (parent_scale - math.log(1.6)).expand(2, 3))
    assert float(torch.sigmoid(params["opacities"].detach()).min()) > 0.005  # the low-opacity one is gone
    # optimizer state follows: same tensors registered, moments kept for survivors and zero for new gaussians
    for k, p in params.items():
        st = opt[k].state[p]
        assert opt[k].param_groups[0]["params"][0] is p
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
        assert (st["exp_avg"][3:] == 0).all()
    torch.testing.assert_close(opt["sh0"].state[params["sh0"]]["exp_avg"][1], exp_avg_kept)
    # statistics reset and resized
    assert state["grad2d"].shape == (6,) and (state["grad2d"] == 0).all()
    # the optimizers still step
    sum(p.sum() for p in params.values()).backward()
    for o in opt.values():
        o.step()


def test_schedule_start_every_stop_and_reset():
    params, opt = make()
    s = DefaultDensifier(refine_start_iter=5, refine_every=10, refine_stop_iter=25, reset_every=20, prune_opa=0.005)
    state = s.initialize_state()
    for step in (0, 3, 5, 9, 11):  # before the start, or not a refine step: statistics only
        assert s.step_post_backward(params, opt, state, step, step_info())["duplicated"] == 0
    assert params["means"].shape[0] == 5
    assert float(state["count"][0]) == 5 and float(state["count"][4]) == 0  # invisible: no statistics
    assert s.step_post_backward(params, opt, state, 20, step_info()) == {"duplicated": 1, "split": 1, "pruned": 1,
                                                                         "reset": 1}
    assert float(torch.sigmoid(params["opacities"].detach()).max()) <= 0.01 + 1e-6  # reset to 2 * prune_opa
    assert (opt["opacities"].state[params["opacities"]]["exp_avg"] == 0).all()
    n = params["means"].shape[0]
    info = step_info_for(params, grad=1.0)
    assert s.step_post_backward(params, opt, state, 30, info)["duplicated"] == 0  # after the stop
    assert params["means"].shape[0] == n


def test_large_gaussians_are_pruned_after_the_first_reset():
    params, opt = make()
    s = DefaultDensifier(refine_start_iter=0, refine_every=10, reset_every=15, prune_scale3d=0.04,
                         grow_grad2d=1.0)
    state = s.initialize_state(scene_scale=1.0)
    assert s.step_post_backward(params, opt, state, 10, step_info())["pruned"] == 1  # opacity only
    assert s.step_post_backward(params, opt, state, 20, step_info_for(params))["pruned"] >= 1  # + the 0.05 one
    assert float(torch.exp(params["scales"].detach()).max()) <= 0.04


def step_info_for(params, grad=0.0):
    n = params["means"].shape[0]
    return info_with_grads(torch.full((1, n, 2), grad), torch.full((1, n, 2), 2, dtype=torch.int32))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_same_decisions_as_gsplat_default_strategy(device):
    gs = pytest.importorskip("gsplat", reason="gsplat is not installed (pip install gsplat)")
    results = []
    for strategy in (DefaultDensifier(refine_start_iter=5, refine_every=10, reset_every=1000),
                     gs.DefaultStrategy(refine_start_iter=5, refine_every=10, reset_every=1000)):
        torch.manual_seed(0)
        params, opt = make(device)
        strategy.check_sanity(params, opt)
        state = strategy.initialize_state(scene_scale=1.0)
        for step in (8, 10):
            info = step_info(device)
            strategy.step_pre_backward(params, opt, state, step, info)
            strategy.step_post_backward(params, opt, state, step, info)
        results.append({k: p.detach().cpu() for k, p in params.items()})
    ours, theirs = results
    assert ours["means"].shape == theirs["means"].shape == (6, 3)
    for k in ours:  # identical except the randomly sampled split positions
        a, b = (ours[k], theirs[k]) if k != "means" else (ours[k][:4], theirs[k][:4])
        torch.testing.assert_close(a, b)


def test_params_and_optimizers_must_match():
    params, opt = make()
    s = DefaultDensifier()
    del opt["sh0"]
    with pytest.raises(ValueError, match="one optimizer per parameter"):
        s.check_sanity(params, opt)
    del params["quats"]
    with pytest.raises(ValueError, match="missing: quats"):
        s.check_sanity(params, opt)


# ---------------------------------------------------------------------------------------------- through the system
def tiny_system(device="cpu", **densify):
    import threestudio

    cfg = {"geometry_type": "gaussian-splatting", "geometry": {"init_num_points": 80, "init_radius": 0.4,
                                                                "sh_degree": 1, "sh_degree_interval": 0},
           "material_type": "no-material", "background_type": "solid-color", "renderer_type":
           "gaussian-splatting-renderer", "densify": densify, "loss": {"lambda_l1": 1.0}}
    system = threestudio.find("gaussian-splatting-system")(cfg).to(device)
    optim = system.configure_optimizers()["optimizer"]
    return system, optim


def train_step(system, optim, step, device):
    from threestudio.ops import cameras as cam

    tt = cam.turntable(2, 20.0, 1.5, 50.0)
    batch = {"c2w": tt["c2w"].to(device), "fovy_rad": tt["fovy"].to(device), "height": 20, "width": 20,
             "bg_color": torch.ones(3, device=device)}
    out = system(batch)
    meta = out["splat_meta"]
    if system._strategy is not None:
        system._strategy.step_pre_backward(system.geometry.params, system._views(), system._strategy_state, step,
                                           meta)
    optim.zero_grad()
    (out["comp_rgb"] - 0.3).abs().mean().backward()
    optim.step()
    system._last_meta, system._last_step = meta, step
    system._densify()


def check_optimizer_follows(system, optim):
    by_name = {g["name"]: g for g in optim.param_groups}
    for k, p in system.geometry.params.items():
        assert by_name[k]["params"] == [p]
        st = optim.state.get(p)
        if st:
            assert st["exp_avg"].shape == p.shape


def test_system_densifies_through_its_shared_optimizer():
    system, optim = tiny_system(refine_start_iter=0, refine_every=2, grow_grad2d=1e-9, reset_every=1000)
    assert type(system._strategy).__name__ == "DefaultDensifier"
    for step in range(3):
        train_step(system, optim, step, "cpu")
    assert system.geometry.num_gaussians > 80
    check_optimizer_follows(system, optim)
    assert system._strategy_state["grad2d"].shape[0] == system.geometry.num_gaussians


def test_gsplat_default_strategy_edits_the_shared_optimizer_through_group_views():
    gs = pytest.importorskip("gsplat", reason="gsplat is not installed (pip install gsplat)")
    system, optim = tiny_system(strategy="none")
    strategy = gs.DefaultStrategy(refine_start_iter=0, refine_every=2, grow_grad2d=1e-9, reset_every=1000)
    system._strategy, system._strategy_state = strategy, strategy.initialize_state(scene_scale=0.4)
    strategy.check_sanity(system.geometry.params, system._views())
    for step in range(3):
        train_step(system, optim, step, "cpu")
    assert system.geometry.num_gaussians > 80
    check_optimizer_follows(system, optim)


def test_mcmc_needs_cuda_and_says_so():
    with pytest.raises(ValueError, match="mcmc runs on CUDA through gsplat"):
        tiny_system(strategy="mcmc")


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["default", "mcmc"])
def test_gsplat_strategies_on_cuda_through_the_system(strategy):
    pytest.importorskip("gsplat")
    system, optim = tiny_system("cuda", strategy=strategy, refine_start_iter=0, refine_every=2, grow_grad2d=1e-9,
                                reset_every=1000, cap_max=200)
    assert type(system._strategy).__module__.startswith("gsplat")
    for step in range(5):
        train_step(system, optim, step, "cuda")
    n = system.geometry.num_gaussians
    assert (n > 80) if strategy == "default" else (n == min(200, int(1.05 * int(1.05 * 80))))
    check_optimizer_follows(system, optim)


# ---------------------------------------------------------------------------------------------- opacity resets
def test_opacity_reset_happens_with_gsplat_default_strategy():
    """gsplat 1.5.3's DefaultStrategy skips its opacity resets (operator precedence in its test); the system resets
    them itself, once, at exactly the scheduled steps."""
    gs = pytest.importorskip("gsplat", reason="gsplat is not installed (pip install gsplat)")
    system, optim = tiny_system(strategy="none")
    strategy = gs.DefaultStrategy(refine_start_iter=10_000, refine_stop_iter=20_000, reset_every=4, prune_opa=0.01)
    system._strategy, system._strategy_state = strategy, strategy.initialize_state(scene_scale=0.4)
    system.cfg.densify.reset_every, system.cfg.densify.refine_stop_iter, system.cfg.densify.prune_opa = 4, 20_000, 0.01
    limit = math.log(0.02 / 0.98)
    with torch.no_grad():
        system.geometry.params["opacities"].fill_(2.0)  # opacity 0.88
    for step in range(1, 4):
        train_step(system, optim, step, "cpu")
        assert float(system.geometry.params["opacities"].detach().max()) > 1.5  # not a reset step
    train_step(system, optim, 4, "cpu")
    assert float(system.geometry.params["opacities"].detach().max()) <= limit + 1e-6
    state = optim.state[system.geometry.params["opacities"]]
    assert float(state["exp_avg"].abs().max()) == 0.0  # the reset clears the opacities' Adam moments
    check_optimizer_follows(system, optim)
    if gs.__version__ == "1.5.3":  # the upstream bug this works around: gsplat alone leaves them untouched
        from threestudio.ops.splatting.densify import ensure_opacity_reset

        params, opt = make()
        st = strategy.initialize_state(scene_scale=1.0)
        info = step_info_for(params)
        strategy.step_pre_backward(params, opt, st, 8, info)
        strategy.step_post_backward(params, opt, st, 8, info)
        assert float(torch.sigmoid(params["opacities"]).max()) > 0.5
        assert ensure_opacity_reset(params, opt, st, 8, 4, 20_000, 0.01)
        assert float(torch.sigmoid(params["opacities"]).max()) <= 0.02 + 1e-6


def test_ensure_opacity_reset_only_at_scheduled_steps():
    from threestudio.ops.splatting.densify import ensure_opacity_reset

    params, opt = make()
    for step, expected in ((0, False), (7, False), (16, False), (8, True)):
        # 16 is past refine_stop_iter (12): no resets there, as the strategies schedule them
        assert ensure_opacity_reset(params, opt, {}, step, 4, 12, 0.01) is expected
    assert float(torch.sigmoid(params["opacities"]).max()) <= 0.02 + 1e-6
    assert ensure_opacity_reset(params, opt, {}, 8, 4, 12, 0.01) is False  # already at the reset value

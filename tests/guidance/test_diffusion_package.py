"""The diffusion package: typed compile options of the guidances (``compile`` + ``compile_options``), the old flat
keys, and the old import paths of what moved into ``threestudio.models.diffusion``."""

import dataclasses

import pytest
import torch

import threestudio
from threestudio.models.diffusion.compile import (
    LEGACY_COMPILE_KEYS,
    CompileConfig,
    CompileSettings,
    SkipKnownGuards,
    compile_enabled,
    compile_unet_and_vae,
    resolve_compile_options,
)
from threestudio.utils.config import ConfigError, parse_structured

GUIDANCES = ("stable-diffusion-guidance", "stable-diffusion-asd-guidance", "mvdream-sds-guidance",
             "mvdream-asd-guidance")


@pytest.fixture
def warnings_seen(monkeypatch):
    import threestudio.utils.log as log

    seen = []
    monkeypatch.setattr(log, "warn", lambda msg, *a, **k: seen.append(msg))
    return seen


@pytest.mark.parametrize("name", GUIDANCES)
def test_every_diffusion_guidance_declares_the_compile_fields_once(name):
    """The compile fields come from CompileSettings (one declaration), not copies in each Config."""
    cfg_cls = threestudio.find(name, "guidance").Config
    assert issubclass(cfg_cls, CompileSettings)
    names = {f.name for f in dataclasses.fields(cfg_cls) if f.name.startswith("compile")}
    assert names == {f.name for f in dataclasses.fields(CompileSettings)}
    c = parse_structured(cfg_cls, {})
    assert c.compile is None and compile_enabled(c, on_cuda=True) and not compile_enabled(c, on_cuda=False)
    assert resolve_compile_options(c) == CompileConfig()


def test_nested_options_are_read_and_validated(warnings_seen):
    cls = threestudio.find("mvdream-sds-guidance", "guidance").Config
    c = parse_structured(cls, {"compile": True, "compile_options": {"backend": "eager", "vae": False}})
    opts = resolve_compile_options(c)
    assert (opts.backend, opts.vae, opts.mode, opts.skip_guards) == ("eager", False, "reduce-overhead", True)
    assert warnings_seen == []
    with pytest.raises(ConfigError, match=r"(?s)compile_options\.bakend.*did you mean 'backend'"):
        parse_structured(cls, {"compile_options": {"bakend": "eager"}})
    with pytest.raises(ConfigError, match=r"(?s)compile_options\.vae.*wrong type"):
        parse_structured(cls, {"compile_options": {"vae": "sometimes"}})


@pytest.mark.parametrize("name", ["stable-diffusion-guidance", "mvdream-asd-guidance"])
def test_old_flat_keys_still_work_and_name_the_new_key(name, warnings_seen):
    cls = threestudio.find(name, "guidance").Config
    old = {"compile_mode": "max-autotune", "compile_backend": "eager", "compile_vae": False,
           "compile_skip_guards": False, "compile_cache_dir": "/tmp/x"}
    assert set(old) == set(LEGACY_COMPILE_KEYS)
    c = parse_structured(cls, {**old, "compile_options": {"mode": "default"}})
    opts = resolve_compile_options(c, key="system.guidance")
    assert opts == CompileConfig(mode="max-autotune", backend="eager", vae=False, skip_guards=False,
                                 cache_dir="/tmp/x")  # the flat key wins over the nested default
    assert len(warnings_seen) == len(old)
    for flat, new in LEGACY_COMPILE_KEYS.items():
        assert any(f"system.guidance.{flat} is deprecated: use system.guidance.compile_options.{new}" in w
                   for w in warnings_seen)


def test_recipe_validation_accepts_both_spellings():
    """At start-up (the launcher's validation), the nested keys and the old flat keys both validate; a typo in a
    nested key is reported with its full path."""
    from threestudio.utils.config import load_config

    import os

    recipe = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "dreamfusion-sd.yaml")
    prompt = "system.prompt_processor.prompt=a cat"
    cfg = load_config(recipe, cli_args=[prompt, "system.guidance.compile_options.backend=eager",
                                        "system.guidance.compile_backend=eager"])
    assert cfg.system.guidance.compile_options.backend == "eager"
    with pytest.raises(ConfigError, match=r"system\.guidance\.compile_options\.moed"):
        load_config(recipe, cli_args=[prompt, "system.guidance.compile_options.moed=default"])


def test_compile_unet_and_vae_follows_the_options(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()

    def unet(x):
        return x * 2

    def encode(x):
        return x + 1

    u, e = compile_unet_and_vae(unet, encode, CompileConfig(backend="eager", vae=False), "test")
    assert isinstance(u, SkipKnownGuards) and e is encode
    assert torch.equal(u(torch.ones(2)), torch.full((2,), 2.0))
    u, e = compile_unet_and_vae(unet, encode, CompileConfig(backend="eager", skip_guards=False), "test")
    assert not isinstance(u, SkipKnownGuards) and not isinstance(e, SkipKnownGuards) and e is not encode
    assert torch.equal(e(torch.ones(2)), torch.full((2,), 2.0))


def test_old_import_paths_still_work():
    """Extensions and scripts written against the old paths keep working: the same objects, the same modules."""
    import subprocess
    import sys

    from threestudio.models.diffusion import cache
    from threestudio.models.diffusion.mvdream import keymap, loading, unet
    from threestudio.models.guidance.base import SkipKnownGuards as OldSkipKnownGuards
    from threestudio.models.guidance.mvdream import keymap as old_keymap
    from threestudio.models.guidance.mvdream import loading as old_loading
    from threestudio.models.guidance.mvdream import unet as old_unet
    from threestudio.models.guidance.stable_diffusion_base import configure_compile_cache
    from threestudio.models.prompt_processors.base import default_cache_root
    from threestudio.models.prompt_processors.mvdream_prompt_processor import DEFAULT_TOKENIZER

    assert old_loading is loading and old_keymap is keymap and old_unet is unet
    assert OldSkipKnownGuards is SkipKnownGuards and configure_compile_cache is cache.configure_compile_cache
    assert default_cache_root is cache.default_cache_root and DEFAULT_TOKENIZER == loading.DEFAULT_TOKENIZER
    out = subprocess.run([sys.executable, "-m", "threestudio.models.guidance.mvdream.convert", "--help"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "--tokenizer" in out.stdout, out.stderr

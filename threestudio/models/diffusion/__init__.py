"""Diffusion plumbing shared by guidance and prompt processors (it imports neither of them).

- :mod:`.cache`: the cache root (``$THREESTUDIO_CACHE`` or ``~/.cache/threestudio``) and inductor's on-disk
  compile cache under it;
- :mod:`.compile`: :class:`~.compile.CompileConfig` (the typed ``compile_options`` of a guidance config),
  ``torch.compile`` set-up of the UNet call and VAE encode, :class:`~.compile.SkipKnownGuards`;
- :mod:`.stable_diffusion`: loading Stable Diffusion's UNet, VAE, scheduler and CLIP text encoder with name and
  shape checks (a missing or mismatched model stops the run before training);
- :mod:`.mvdream`: MVDream's multi-view UNet (:mod:`.mvdream.unet`), the checkpoint key maps
  (:mod:`.mvdream.keymap`), loading and random models (:mod:`.mvdream.loading`) and the checkpoint -> diffusers
  folder converter (``python -m threestudio.models.diffusion.mvdream.convert``).

Nothing heavy is imported here: diffusers and transformers load when a model is built.
"""

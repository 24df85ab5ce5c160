"""MVDream (bytedance/MVDream) guidances: a 4-view diffusion model for text-to-3D.

- guidances ``mvdream-sds-guidance`` (:mod:`.mvdream_sds_guidance`) and ``mvdream-asd-guidance``
  (:mod:`.mvdream_asd_guidance`), their shared machinery (:mod:`.base`) and camera / x0 math (:mod:`.score`);
- the models (multi-view UNet, checkpoint key maps, loading, conversion) are in
  :mod:`threestudio.models.diffusion.mvdream`; ``.keymap``, ``.loading``, ``.unet`` and ``.convert`` here are the
  same modules under their old import paths;
- the text side is ``mvdream-prompt-processor`` (``threestudio/models/prompt_processors/mvdream_prompt_processor.py``)
  and the cameras ``multiview-camera`` (``threestudio/data/multiview_camera.py``).

Nothing heavy is imported here: diffusers and transformers load when a module is built.
"""

"""MVDream (bytedance/MVDream): a 4-view diffusion model for text-to-3D guidance.

- :mod:`.unet`: the multi-view UNet on diffusers' ``UNet2DConditionModel`` (cross-view self-attention, camera
  embedding);
- :mod:`.keymap`, :mod:`.loading`: the ``sd-v2.1-base-4view.pt`` checkpoint (UNet, OpenCLIP text tower, autoencoder)
  by key mapping, or a diffusers-format folder; random-weight models for tests and benchmarks;
- :mod:`.score`: camera condition and x0-reconstruction math;
- guidances ``mvdream-sds-guidance`` (:mod:`.mvdream_sds_guidance`) and ``mvdream-asd-guidance``
  (:mod:`.mvdream_asd_guidance`); the text side is ``mvdream-prompt-processor``
  (``threestudio/models/prompt_processors/mvdream_prompt_processor.py``) and the cameras ``multiview-camera``
  (``threestudio/data/multiview_camera.py``);
- ``python -m threestudio.models.guidance.mvdream.convert`` writes a checkpoint as a diffusers-format folder.

Nothing heavy is imported here: diffusers and transformers load when a module is built.
"""

"""MVDream (bytedance/MVDream) models: the multi-view UNet, checkpoint key maps, loading and conversion.

The guidances that use them are in :mod:`threestudio.models.guidance.mvdream`; the text side is
``mvdream-prompt-processor``. Nothing heavy is imported here.
"""

"""MVDream (bytedance/MVDream) models: the multi-view UNet, checkpoint key maps, loading and conversion.

The guidances that use them are in :mod:`threestudio.models.guidance.mvdream`; the text side is
``mvdream-prompt-processor``. Nothing heavy is imported here.
"""

# the default checkpoint (here, not in .loading, so that the guidance and prompt-processor Configs import no torch)
DEFAULT_REPO = "MVDream/MVDream"
DEFAULT_FILE = "sd-v2.1-base-4view.pt"

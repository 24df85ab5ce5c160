"""Old command path: ``python -m threestudio.models.guidance.mvdream.convert`` runs
``python -m threestudio.models.diffusion.mvdream.convert`` (same arguments)."""

import sys

from threestudio.models.diffusion.mvdream.convert import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

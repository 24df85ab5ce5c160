#!/usr/bin/env python
"""Train, evaluate or export a recipe: ``python launch.py --config configs/quickstart.yaml --train``."""

import sys

from threestudio.launcher import main

if __name__ == "__main__":
    sys.exit(main())

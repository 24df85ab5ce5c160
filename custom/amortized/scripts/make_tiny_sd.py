"""Write a tiny random-weight Stable Diffusion folder (for custom/amortized/configs/tiny-cpu.yaml):
``python custom/amortized/scripts/make_tiny_sd.py /tmp/tiny-sd``."""

import sys

from threestudio.utils.weights import save_random_stable_diffusion

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_tiny_sd.py OUTPUT_FOLDER")
    print(save_random_stable_diffusion(sys.argv[1], preset="tiny"))

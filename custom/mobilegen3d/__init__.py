"""MobileGen3D: distil a trained scene into a mobile NeLF student (MobileR2L) and edit scenes with
Instruct-NeRF2NeRF. See README.md in this folder."""

from . import data, system  # noqa: F401  (register nelf-pseudo-data, nelf-student-system)
from . import in2n_system, ip2p  # noqa: F401  (register in2n-system, instruct-pix2pix-guidance)

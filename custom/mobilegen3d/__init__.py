"""MobileGen3D: distil a trained scene into a mobile NeLF student (MobileR2L) and edit scenes with
Instruct-NeRF2NeRF. See README.md in this folder.

Importing the package registers nelf-pseudo-data, nelf-student-system, in2n-system and instruct-pix2pix-guidance
from ``_manifest.py`` (generated: ``python -m threestudio.utils.manifest --write``); each module is imported when its
name is first looked up."""

from threestudio.registry import add_manifest

add_manifest(__name__)

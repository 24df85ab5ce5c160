"""ScaleDreamer-style amortized text-to-3D: prompt libraries, an embedding store, text-conditioned generators
(``hyper-ingp``, ``3dconv-net``, ``triplane-transformer``), a VolSDF renderer, a text-conditioned background and the
``multiprompt-generator`` system. See README.md in this folder.

Importing the package registers its names from ``_manifest.py`` (generated: ``python -m threestudio.utils.manifest
--write``); each module is imported when its name is first looked up."""

from threestudio.registry import add_manifest

add_manifest(__name__)

"""``--export SITE``: the gallery as a static folder to share (any static web server shows it).

The folder gets the page, its scripts, ``data.js`` (every trial's summary and details) and a copy of each file the
page shows (videos, validation grids, meshes, splats) under ``files/``. Nothing is written into the trials' folder,
and the site may not be inside it.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, List

from threestudio.gallery import trials as T
from threestudio.gallery.server import STATIC, resolve_under

MARKER = ".threestudio-gallery"


class ExportError(ValueError):
    pass


def _media_files(d: Dict[str, Any]) -> List[str]:
    m = d["media"]
    files = list(m["videos"]) + list(m["meshes"]) + list(m["splats"]) + list(m["images"])
    for g in m["grids"]:
        files += g["images"]
    return files


def export_site(root: str, site: str) -> Dict[str, int]:
    root_real, site_real = os.path.realpath(root), os.path.realpath(site)
    if site_real == root_real or site_real.startswith(root_real + os.sep):
        raise ExportError(f"--export {site}: the site would be written inside the served folder {root}; choose a "
                          f"folder outside it (the trials are never written to).")
    if os.path.isdir(site) and os.listdir(site) and not os.path.isfile(os.path.join(site, MARKER)):
        raise ExportError(f"--export {site}: the folder is not empty and holds no gallery export; choose a new or "
                          f"empty folder.")
    os.makedirs(site, exist_ok=True)
    trials = T.find_trials(root)
    summaries = [T.summary(root, t) for t in trials]
    details = {s["id"]: T.details(root, t) for s, t in zip(summaries, trials)}
    n_files = 0
    for d in details.values():
        for rel in _media_files(d):
            src = resolve_under(root, rel)
            if src is None:
                continue
            dst = os.path.join(site, "files", *rel.split("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)
            n_files += 1
    shutil.copytree(STATIC, os.path.join(site, "static"), dirs_exist_ok=True)
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
        page = f.read()
    page = page.replace("<!-- gallery-data -->", '<script src="data.js"></script>')
    with open(os.path.join(site, "index.html"), "w", encoding="utf-8") as f:
        f.write(page)
    with open(os.path.join(site, "data.js"), "w", encoding="utf-8") as f:
        f.write("window.GALLERY_DATA = " + json.dumps({"trials": summaries, "details": details}) + ";\n")
    with open(os.path.join(site, MARKER), "w", encoding="utf-8") as f:
        f.write("a static export of python -m threestudio.gallery\n")
    return {"trials": len(summaries), "files": n_files}

"""Reading trial folders for the gallery (never writing them).

A trial is a folder ``<root>/<name>/<tag>@<time>/`` written by ``launch.py`` (it has ``configs/parsed.yaml``). For
each one :func:`summary` gives what the list shows and :func:`details` what the trial's page shows: status, steps,
times, metrics, media (videos, validation grids by step, exported GLB meshes and 3DGS PLY files), the curves of
``csv_logs/metrics.csv``, the resolved config with the keys the command line overrode, and the commands that resume
or export it. Paths are relative to ``root`` (``/``-separated), the only form the server accepts.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import socket
from typing import Any, Dict, List, Optional

VIDEO_EXT = (".mp4", ".webm", ".gif")
IMAGE_EXT = (".png", ".jpg", ".jpeg")
MAX_CURVE_POINTS = 5000  # per column; longer logs are thinned evenly (the first and last rows kept)


def find_trials(root: str) -> List[str]:
    """Trial folders under ``root`` (two levels: experiment / trial), newest first."""
    out = []
    if not os.path.isdir(root):
        return out
    for exp in sorted(os.listdir(root)):
        exp_dir = os.path.join(root, exp)
        if not os.path.isdir(exp_dir) or os.path.islink(exp_dir):
            continue
        for trial in os.listdir(exp_dir):
            t = os.path.join(exp_dir, trial)
            if os.path.isdir(t) and not os.path.islink(t) and os.path.isfile(os.path.join(t, "configs", "parsed.yaml")):
                out.append(t)
    return sorted(out, key=lambda t: os.path.getmtime(t), reverse=True)


def _rel(root: str, path: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _config(trial: str) -> Dict[str, Any]:
    import yaml

    try:
        with open(os.path.join(trial, "configs", "parsed.yaml"), encoding="utf-8") as f:
            data = yaml.safe_load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def _get(cfg: Dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _alive(pid: Any, host: Any) -> bool:
    if not isinstance(pid, int) or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_of(trial: str) -> str:
    """running / finished / interrupted / failed (``status.json`` written by launch.py), ``killed`` for a run that
    says it is running but whose process is gone, or, for trials without ``status.json``, finished when it has
    test metrics and ``unknown`` otherwise."""
    st = _read_json(os.path.join(trial, "status.json"))
    s = st.get("status")
    if s == "running":
        return "running" if _alive(st.get("pid"), st.get("host")) else "killed"
    if s in ("finished", "interrupted", "failed"):
        return str(s)
    return "finished" if os.path.isfile(os.path.join(trial, "save", "metrics.json")) else "unknown"


def read_curves(path: str) -> Dict[str, Any]:
    """``{"columns": {name: {"step": [...], "value": [...]}}, "rows": n}`` from a Lightning CSV log: each column's
    non-empty cells against the row's ``step``."""
    cols: Dict[str, Dict[str, List[float]]] = {}
    n = 0
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                n += 1
                try:
                    step = float(row.get("step") or "nan")
                except ValueError:
                    continue
                for k, v in row.items():
                    if k in ("step", "epoch") or k is None or v in (None, ""):
                        continue
                    try:
                        val = float(v)
                    except ValueError:
                        continue
                    c = cols.setdefault(k, {"step": [], "value": []})
                    c["step"].append(step)
                    c["value"].append(val)
    except OSError:
        return {"columns": {}, "rows": 0}
    for c in cols.values():
        if len(c["step"]) > MAX_CURVE_POINTS:
            idx = sorted({round(i * (len(c["step"]) - 1) / (MAX_CURVE_POINTS - 1)) for i in range(MAX_CURVE_POINTS)})
            c["step"] = [c["step"][i] for i in idx]
            c["value"] = [c["value"][i] for i in idx]
    return {"columns": cols, "rows": n}


def _best_metric(trial: str) -> Dict[str, Any]:
    m = _read_json(os.path.join(trial, "save", "metrics.json"))
    for key in ("test/psnr", "test/clip_similarity", "test/ssim"):
        if isinstance(m.get(key), (int, float)):
            return {"name": key, "value": float(m[key])}
    numeric = {k: v for k, v in m.items() if isinstance(v, (int, float)) and k.startswith(("test/", "val/"))}
    if numeric:
        k = sorted(numeric)[0]
        return {"name": k, "value": float(numeric[k])}
    return {}


def _last_step(trial: str) -> Optional[int]:
    steps = []
    for name in os.listdir(os.path.join(trial, "ckpts")) if os.path.isdir(os.path.join(trial, "ckpts")) else []:
        m = re.search(r"step=(\d+)", name)
        if m:
            steps.append(int(m.group(1)))
    m = _read_json(os.path.join(trial, "save", "metrics.json"))
    if isinstance(m.get("step"), int):
        steps.append(m["step"])
    return max(steps) if steps else None


def _command_overrides(trial: str) -> List[str]:
    """The ``key=value`` overrides of the trial's first command line (``cmd.txt``)."""
    try:
        with open(os.path.join(trial, "cmd.txt"), encoding="utf-8") as f:
            first = f.readline()
    except OSError:
        return []
    try:
        args = shlex.split(first)
    except ValueError:
        return []
    out = []
    skip = False
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a in ("--config", "--resume", "--gpu", "--seed", "--extensions", "--cpu-ranks"):
            skip = True
            continue
        if not a.startswith("-") and "=" in a and not a.endswith(".py"):
            out.append(a)
    return out


def summary(root: str, trial: str) -> Dict[str, Any]:
    cfg = _config(trial)
    st = _read_json(os.path.join(trial, "status.json"))
    metrics = _read_json(os.path.join(trial, "save", "metrics.json"))
    prompt = _get(cfg, "system.prompt_processor.prompt")
    dataroot = _get(cfg, "data.dataroot")
    wall = metrics.get("train_time_s")
    if wall is None and st.get("started") and st.get("ended"):
        import datetime

        try:
            wall = (datetime.datetime.fromisoformat(st["ended"]) -
                    datetime.datetime.fromisoformat(st["started"])).total_seconds()
        except ValueError:
            wall = None
    return {
        "id": _rel(root, trial), "name": cfg.get("name") or os.path.basename(os.path.dirname(trial)),
        "trial": os.path.basename(trial), "tag": cfg.get("tag"), "system": cfg.get("system_type"),
        "prompt": prompt if isinstance(prompt, str) else None,
        "dataroot": dataroot if isinstance(dataroot, str) else None,
        "status": status_of(trial), "steps": _last_step(trial), "max_steps": _get(cfg, "trainer.max_steps"),
        "train_time_s": wall, "best": _best_metric(trial), "started": st.get("started"),
        "modified": os.path.getmtime(trial),
    }


def _media(root: str, trial: str) -> Dict[str, Any]:
    save = os.path.join(trial, "save")
    videos, grids, meshes, splats, images = [], {}, [], [], []
    for dirpath, dirnames, files in os.walk(save) if os.path.isdir(save) else []:
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(files):
            p = os.path.join(dirpath, name)
            if name.startswith(".") or os.path.islink(p):
                continue
            rel = _rel(root, p)
            low = name.lower()
            if low.endswith(VIDEO_EXT):
                videos.append(rel)
            elif low.endswith(".glb"):
                meshes.append(rel)
            elif low.endswith(".ply") and "export" in dirpath and _is_gaussian_ply(p):
                splats.append(rel)
            elif low.endswith(IMAGE_EXT) and dirpath == save:
                m = re.match(r"it(\d+)-(.+)\.(png|jpe?g)$", name)
                if m:  # validation grids: it<step>-<view>.png
                    grids.setdefault(int(m.group(1)), []).append(rel)
                else:
                    images.append(rel)
            elif low.endswith(IMAGE_EXT) and re.search(r"it\d+-val$", dirpath):
                step = int(re.search(r"it(\d+)-val$", dirpath).group(1))  # type: ignore[union-attr]
                grids.setdefault(step, []).append(rel)
    return {"videos": videos, "grids": [{"step": k, "images": v} for k, v in sorted(grids.items())],
            "meshes": meshes, "splats": splats, "images": images}


def _is_gaussian_ply(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"f_dc_0" in head and b"opacity" in head


def details(root: str, trial: str) -> Dict[str, Any]:
    out = summary(root, trial)
    out["media"] = _media(root, trial)
    out["curves"] = read_curves(os.path.join(trial, "csv_logs", "metrics.csv"))
    try:
        with open(os.path.join(trial, "configs", "parsed.yaml"), encoding="utf-8") as f:
            out["config"] = f.read()
    except OSError:
        out["config"] = ""
    out["overrides"] = _command_overrides(trial)
    out["metrics"] = _read_json(os.path.join(trial, "save", "metrics.json"))
    out["status_info"] = _read_json(os.path.join(trial, "status.json"))
    quoted = shlex.quote(trial)
    out["commands"] = {"resume": f"python launch.py --train --resume {quoted}",
                       "test": f"python launch.py --test --resume {quoted}",
                       "export": f"python launch.py --export --resume {quoted}"}
    return out

#!/usr/bin/env python
"""Start-up time of every runnable recipe: ``launch.py --config RECIPE --train`` in a fresh process, up to the log
line "Config ... loaded and validated", and which heavy modules were imported by then.

Each run is a new Python process (interpreter, ``import torch``, extensions in ``custom/``, config load and
validation, every registry lookup the validation makes) that stops itself when the launcher logs the line: a handler
on the ``threestudio`` logger reports ``sys.modules`` and exits, so nothing is trained, built or written. The time is
the parent's wall clock from spawning the process to that report (the best of ``--repeat`` runs).

Recipes: ``configs/**/*.yaml`` and ``custom/*/configs/**/*.yaml``, without ``base/`` folders and ``base*.yaml``
files (shared settings, not runs). Values a recipe leaves mandatory (``???``: the prompt, a data folder) get test
values. ``--repo`` times another checkout with this interpreter (e.g. a ``git worktree`` of an older commit), so two
versions can be compared in one sitting on the same machine:

    python scripts/bench/bench_startup.py                       # this checkout
    git worktree add --detach /tmp/old <commit>
    python scripts/bench/bench_startup.py --repo /tmp/old --compare .   # both, interleaved, same machine

Prints a table (seconds per recipe, heavy modules imported) and, with ``--json``, writes the rows.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:  # the parent reads recipes with this checkout's threestudio, installed or not
    sys.path.insert(0, REPO)
HEAVY = ("torch", "pytorch_lightning", "diffusers", "transformers", "nerfacc", "gsplat")
MARK = "@@startup "
# values a recipe may leave mandatory ('???'), as the recipe tests supply them (tests/test_recipes.py checks that
# its values agree and that every recipe found here validates with these)
REQUIRED = {"data.dataroot": "load/scenes/quickstart", "system.prompt_processor.prompt": "a test prompt",
            "system.source_text": "car", "system.target_text": "police car", "system.checkpoint": "shapenet.pt",
            "system.prompt_processor.prompt_library": "load/prompt_libraries/amortized_example.json",
            "system.prompt": "make it autumn", "system.init_from": "LAST:outputs/zero1tog-demo-mix",
            "system.image": "photo.png"}

# runs inside the child: stop at the "loaded and validated" log line and report what is imported
CHILD = r"""
import json, logging, os, runpy, sys
repo, argv = sys.argv[1], sys.argv[2:]
heavy = json.loads(os.environ["BENCH_STARTUP_HEAVY"])

class _Stop(logging.Handler):
    def emit(self, record):
        if "loaded and validated" in record.getMessage():
            import threestudio
            info = {"heavy": [m for m in heavy if m in sys.modules], "modules": len(sys.modules),
                    "threestudio": os.path.dirname(threestudio.__file__)}
            sys.stdout.write("@@startup " + json.dumps(info) + "\n")
            sys.stdout.flush()
            os._exit(0)

logging.getLogger("threestudio").addHandler(_Stop())
sys.path.insert(0, repo)
sys.argv = [os.path.join(repo, "launch.py")] + argv
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def find_recipes(repo: str) -> List[str]:
    paths = glob.glob(os.path.join(repo, "configs", "**", "*.yaml"), recursive=True)
    paths += glob.glob(os.path.join(repo, "custom", "*", "configs", "**", "*.yaml"), recursive=True)
    out = []
    for p in sorted(paths):
        rel = os.path.relpath(p, repo)
        if "base" in rel.split(os.sep)[:-1] or os.path.basename(p).startswith("base"):
            continue
        out.append(rel)
    return out


def mandatory_overrides(repo: str, recipe: str) -> List[str]:
    """``key=value`` for each REQUIRED key that the recipe (with the files it extends) leaves '???'."""
    from threestudio.utils.config import missing_overrides

    return missing_overrides(os.path.join(repo, recipe), REQUIRED)


def run_once(repo: str, recipe: str, overrides: Sequence[str], timeout: float) -> Dict:
    """One fresh process; returns {"seconds", "heavy", "modules"} or {"error"}."""
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        argv = ["--config", recipe, "--train", f"exp_root_dir={tmp}", *overrides]
        env = dict(os.environ, BENCH_STARTUP_HEAVY=json.dumps(HEAVY), PYTHONDONTWRITEBYTECODE="0")
        env.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, os.path.abspath(repo), *argv], cwd=repo, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: List[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(MARK):
                    seconds = time.perf_counter() - t0
                    info = json.loads(line[len(MARK):])
                    proc.wait(timeout=timeout)
                    if os.path.realpath(info["threestudio"]) != os.path.realpath(os.path.join(repo, "threestudio")):
                        return {"error": f"imported threestudio from {info['threestudio']}, not {repo}"}
                    return {"seconds": seconds, "heavy": info["heavy"], "modules": info["modules"]}
                lines.append(line.rstrip())
                if time.perf_counter() - t0 > timeout:
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        tail = [ln for ln in lines if ln.strip()][-3:]
        return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}


def bench(repos: Dict[str, str], recipes: Sequence[str], repeat: int, timeout: float) -> List[Dict]:
    rows = []
    for recipe in recipes:
        row: Dict = {"recipe": recipe}
        for label, repo in repos.items():
            if not os.path.isfile(os.path.join(repo, recipe)):
                row[label] = {"error": "no such recipe in this checkout"}
                continue
            overrides = mandatory_overrides(repo, recipe)
            best: Optional[Dict] = None
            for _ in range(repeat):  # interleaving checkouts per recipe keeps machine load comparable
                r = run_once(repo, recipe, overrides, timeout)
                if "error" in r:
                    best = r
                    break
                if best is None or r["seconds"] < best["seconds"]:
                    best = r
            row[label] = best
            msg = f"{best['seconds']:.2f} s, heavy: {','.join(best['heavy']) or '-'}" if "seconds" in best else \
                f"not runnable: {best['error'][:200]}"
            print(f"  {label:>8} {recipe}: {msg}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def table(rows: Sequence[Dict], labels: Sequence[str]) -> str:
    head = "| recipe | " + " | ".join(f"{lb} s | {lb} heavy modules" for lb in labels) + " |"
    out = [head, "|" + "---|" * (1 + 2 * len(labels))]
    for row in rows:
        cells = []
        for lb in labels:
            r = row.get(lb) or {}
            if "seconds" in r:
                cells += [f"{r['seconds']:.2f}", ", ".join(r["heavy"]) or "none"]
            else:
                cells += ["n/a", f"not runnable: {r.get('error', '?')[:80]}"]
        out.append(f"| {row['recipe']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=REPO, help="the checkout to time (default: this one)")
    ap.add_argument("--compare", default=None, metavar="REPO",
                    help="a second checkout, timed in the same sitting (recipe by recipe, interleaved)")
    ap.add_argument("--recipes", nargs="*", default=None, help="recipe paths relative to the repo (default: all)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per recipe; the fastest counts")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before a run counts as failed")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)
    repos = {"this": os.path.abspath(args.repo)}
    if args.compare:
        repos = {"base": os.path.abspath(args.repo), "this": os.path.abspath(args.compare)}
    recipes = args.recipes or find_recipes(repos["this"])
    import platform

    print(f"start-up to 'loaded and validated', best of {args.repeat}; python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs; " + ", ".join(f"{k}={v}" for k, v in repos.items()), file=sys.stderr)
    rows = bench(repos, recipes, args.repeat, args.timeout)
    print(table(rows, list(repos)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repos": repos, "repeat": args.repeat, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

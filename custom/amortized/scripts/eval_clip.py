"""CLIP similarity and R@1 of an amortized test run (ScaleDreamer's protocol, ``scaledreamer.md`` section 4).

    python custom/amortized/scripts/eval_clip.py outputs/<name>/<tag>/save/it<N>-test \
        [--clip openai/clip-vit-large-patch14 | --clip /path/to/clip] [--n-views 120] [--resolution 224] \
        [--json metrics.json] [--markdown metrics.md]

Every sub-folder of the result folder is one prompt (its text from ``prompt.txt`` when present, else the folder name
with '_' -> ' '), holding the numbered render grids ``<i>.png``. Per view: the left H x H square (the RGB panel),
resized bilinearly with antialiasing to ``--resolution`` (as PIL's bilinear resize, which the authors use),
normalised with CLIP's mean/std (no centre crop), embedded with the CLIP image tower; each prompt with the text tower
(both projected, L2-normalised).

- CLIP similarity: cosine(view, own prompt), averaged over the views, then over the prompts;
- CLIP R@1: the fraction of a prompt's views whose most similar prompt among all prompts of the folder is its own
  (argmax of softmax(100 cos) = argmax cos), averaged over the prompts.

``--n-views`` uses that many views, evenly spaced (default: all). Writes JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def find_prompts(result_dir: str) -> List[Tuple[str, str, List[str]]]:
    """[(prompt, folder, sorted png paths)] for every prompt folder with at least one numbered png."""
    if not os.path.isdir(result_dir):
        raise SystemExit(f"eval_clip: {result_dir} is not a folder (pass the it<N>-test folder of a run)")
    out = []
    for name in sorted(os.listdir(result_dir)):
        folder = os.path.join(result_dir, name)
        if not os.path.isdir(folder):
            continue
        pngs = [n for n in os.listdir(folder) if re.fullmatch(r"\d+\.png", n)]
        if not pngs:
            continue
        pngs.sort(key=lambda n: int(n[:-4]))
        txt = os.path.join(folder, "prompt.txt")
        prompt = open(txt, encoding="utf-8").read().strip() if os.path.isfile(txt) else name.replace("_", " ")
        out.append((prompt, folder, [os.path.join(folder, n) for n in pngs]))
    if not out:
        raise SystemExit(f"eval_clip: no prompt folders with numbered PNGs under {result_dir}")
    return out


def pick_views(paths: Sequence[str], n_views: Optional[int]) -> List[str]:
    if not n_views or n_views >= len(paths):
        return list(paths)
    idx = np.linspace(0, len(paths), n_views, endpoint=False).astype(int)
    return [paths[i] for i in idx]


def load_views(paths: Sequence[str], resolution: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[N, 3, R, R]: the left square of each png, resized and normalised."""
    from PIL import Image

    imgs = []
    for p in paths:
        a = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
        h = a.shape[0]
        imgs.append(torch.from_numpy(a[:, :h].copy()).permute(2, 0, 1))
    x = torch.stack(imgs)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        # antialias: PIL's bilinear filter widens with the downscale factor (512 -> 224 averages ~2.3 pixels per tap)
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def load_clip(name: str, device: str):
    from transformers import AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(name).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"eval_clip: could not load the CLIP model '{name}' ({type(e).__name__}: {e}). Pass "
                         f"--clip with a hub id (downloaded on first use) or a folder saved with save_pretrained")
    mean, std = CLIP_MEAN, CLIP_STD
    cfg_path = os.path.join(name, "preprocessor_config.json")
    if os.path.isfile(cfg_path):
        pc = json.load(open(cfg_path))
        mean, std = pc.get("image_mean", mean), pc.get("image_std", std)
    return model, tokenizer, mean, std


def _features(out: Any) -> torch.Tensor:
    return out if torch.is_tensor(out) else out.pooler_output  # transformers versions differ


@torch.no_grad()
def evaluate(result_dir: str, clip: str, n_views: Optional[int] = None, resolution: Optional[int] = None,
             device: str = "cpu", batch_size: int = 32) -> Dict[str, Any]:
    entries = find_prompts(result_dir)
    model, tokenizer, mean, std = load_clip(clip, device)
    res = resolution or int(model.config.vision_config.image_size)
    texts = list(dict.fromkeys(p for p, _, _ in entries))  # unique prompts: the R@1 candidates
    tok = tokenizer(texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt")
    t = F.normalize(_features(model.get_text_features(input_ids=tok.input_ids.to(device),
                                                      attention_mask=tok.attention_mask.to(device))).float(), dim=-1)
    rows = []
    for prompt, folder, paths in entries:
        views = pick_views(paths, n_views)
        feats = []
        for s in range(0, len(views), batch_size):
            x = load_views(views[s : s + batch_size], res, mean, std).to(device)
            feats.append(F.normalize(_features(model.get_image_features(pixel_values=x)).float(), dim=-1))
        v = torch.cat(feats)
        cos = v @ t.t()  # [views, prompts]
        own = texts.index(prompt)
        rows.append({"prompt": prompt, "folder": os.path.basename(folder), "n_views": len(views),
                     "clip_similarity": float(cos[:, own].mean()),
                     "clip_r1": float((cos.argmax(dim=1) == own).float().mean())})
    return {"result_dir": os.path.abspath(result_dir), "clip_model": clip, "resolution": res,
            "n_prompts": len(rows), "n_candidate_prompts": len(texts),
            "clip_similarity": float(np.mean([r["clip_similarity"] for r in rows])),
            "clip_r1": float(np.mean([r["clip_r1"] for r in rows])), "per_prompt": rows}


def markdown(result: Dict[str, Any]) -> str:
    lines = [f"CLIP evaluation of `{result['result_dir']}` with `{result['clip_model']}` "
             f"({result['n_prompts']} prompts, {result['resolution']}^2)", "",
             "| | CLIP similarity | CLIP R@1 |", "|---|---|---|",
             f"| **mean** | **{result['clip_similarity']:.4f}** | **{result['clip_r1']:.4f}** |"]
    for r in result["per_prompt"]:
        lines.append(f"| {r['prompt'].replace('|', '/')} | {r['clip_similarity']:.4f} | {r['clip_r1']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("result_dir")
    ap.add_argument("--clip", default="openai/clip-vit-large-patch14", help="hub id or folder (transformers CLIPModel)")
    ap.add_argument("--n-views", type=int, default=None)
    ap.add_argument("--resolution", type=int, default=None, help="default: the CLIP model's image size")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", default=None, help="default: <result_dir>/clip_metrics.json")
    ap.add_argument("--markdown", default=None, help="default: <result_dir>/clip_metrics.md")
    a = ap.parse_args(argv)
    result = evaluate(a.result_dir, a.clip, a.n_views, a.resolution, a.device, a.batch_size)
    from threestudio.utils.saving import atomic_write_text

    json_path = a.json or os.path.join(a.result_dir, "clip_metrics.json")
    md_path = a.markdown or os.path.join(a.result_dir, "clip_metrics.md")
    atomic_write_text(json_path, json.dumps(result, indent=1))
    atomic_write_text(md_path, markdown(result))
    print(f"CLIP similarity {result['clip_similarity']:.4f}  R@1 {result['clip_r1']:.4f}  "
          f"({result['n_prompts']} prompts) -> {json_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``in2n-system``: Instruct-NeRF2NeRF's iterative dataset update on a trained reconstruction (NeRF or gaussians).

Starting point. ``system.source`` names a finished reconstruction trial of ``nerf-reconstruction`` (e.g.
``configs/nerf-capture.yaml``) or ``gaussian-splatting-system`` (``configs/gaussian-capture.yaml``): a trial folder,
a checkpoint file, or ``LAST:<experiment folder>`` (the newest trial there whose data is this run's, see below). The
in2n recipe repeats the reconstruction recipe's settings (``custom/mobilegen3d/configs/in2n.yaml`` extends
``configs/nerf-capture.yaml``, ``in2n-gaussians.yaml`` extends ``configs/gaussian-capture.yaml``; pass the model
overrides you trained with). Before training, once the data module has told the modules about the scene, the source
is checked and loaded:

* its ``geometry_type``, ``material_type``, ``background_type`` and ``renderer_type`` must be this run's, and so must
  its data settings that decide which photos are the training views (per-view appearance codes) and the world frame
  (dataroot, train_split, test_every, recentring, orientation, scale, distortion); ``data.downscale`` may differ
  (Instruct-NeRF2NeRF works best at <= 512 px). Differences in other module settings are listed as warnings;
* every tensor of its checkpoint must load into this run's modules (strictly: no missing, unexpected or misshapen
  weights), otherwise the run stops with the keys named;
* the modules' schedules (proposal annealing, the SH degree of gaussians, ...) continue from the source's step, as
  Instruct-NeRF2NeRF continues nerfacto's; this run's own step (edits, learning rate, checkpoints) starts at 0.
  The optimizer starts afresh (the source's Adam moments are not loaded).

The source is read only when training starts afresh; ``--resume`` of an in2n trial restores everything from the
in2n checkpoint (the source may be gone by then). ``system.weights`` is refused (use ``source``): BaseSystem would
load it before the data module initialises the scene, which re-initialises gaussians of ``init_type: scene``.

Dataset update (Instruct-NeRF2NeRF's ``in2n_pipeline.py``). At every training step ``s >= edit_start_step`` with
``(s - edit_start_step) % edit_rate == 0``, ``edit_count`` training views, taken in index order and cycling
(0, 1, ..., n-1, 0, ...), are re-edited: the scene is rendered at that training camera (whole image, no gradients;
NeRFs with per-image appearance codes render with that image's code, as nerfstudio does in training mode), the
``instruct-pix2pix-guidance`` edits the render conditioned on the ORIGINAL photo (never an earlier edit) and the
instruction ``prompt``, and the result replaces the training image in the data module (``replace_train_image``); the
batch of step ``s`` was drawn before the edit, so the edit is trained on from step ``s + 1``. Each edit's randomness
(its starting timestep, VAE sample and noise) comes from a generator seeded by ``(edit_seed, s, view)`` alone.

Edited images are quantised to 8 bits, so that the training set, ``save/edits/<view>.png`` (view = training index;
``save/edits/frames.json`` maps it to the photo) and the checkpoint hold the same pixels. ``save/edits/edits.csv``
lists every edit (step, view, starting timestep T). The checkpoint keeps the current edited set, the position in the
cycle and that list; a resumed run re-applies the set before its first step (and rewrites ``save/edits`` to match the
checkpoint, dropping edits made after it), so it continues exactly as a run that never stopped.

Losses: the base system's (``nerf-reconstruction``: ``lambda_rgb`` MSE and the proposal losses, plus ``lambda_l1``:
the L1 photometric loss Instruct-NeRF2NeRF trains with; ``gaussian-splatting-system``: ``lambda_l1``,
``lambda_ssim``, ...). The guidance is built in ``on_fit_start`` and never checkpointed; its instruction embeddings
are encoded once and the text encoder is freed. Evaluation, the test pass (held-out views; their PSNR is against the
unedited photos, so it measures how much the edit changed) and export are the base system's.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import torch

import threestudio
from threestudio.data.multiview import MultiviewDataModule
from threestudio.models.geometry.gaussian_splatting import GaussianSplatting
from threestudio.registry import find
from threestudio.systems.gaussian_splatting import GaussianSplattingSystem
from threestudio.systems.objectives import build_guidance, preflight_guidance
from threestudio.systems.nerf_reconstruction import NeRFReconstruction
from threestudio.utils.config import ConfigError, ConfigIssue, parse_structured
from threestudio.utils.log import info, warn

from .schema import In2NConfig

IN2N_KEY = "in2n_state"
STATE_VERSION = 1
EDITS_DIR = "edits"
# data settings that decide which photos are the training views (appearance codes are per view) and the world frame
# the source's modules live in; data.downscale may differ (edit at a lower resolution than the reconstruction)
DATA_KEYS = ("train_split", "test_every", "recenter", "orient", "scene_scale", "camera_radius", "camera_extent",
             "center", "distortion")
MODULE_SLOTS = ("geometry", "material", "background", "renderer")


class In2NMixin:
    """The in2n logic, on top of a reconstruction system (``NeRFReconstruction`` or ``GaussianSplattingSystem``)."""

    Config = In2NConfig
    cfg: In2NConfig
    _source_step: int = 0  # class default: BaseSystem.__init__ may update modules before configure() ran
    # the InstructPix2Pix editor, this system's own (a plain attribute, not the objective's ``guidance``: the
    # objective is the base system's photometric one, trained on the edited images)
    guidance: Any = None

    # ------------------------------------------------------------------ building
    def configure(self) -> None:
        c = self.cfg
        problems = []
        if c.weights:
            problems.append(ConfigIssue("system.weights", "in2n-system starts from system.source, not weights", "",
                                        f"set system.source={c.weights} (a trial folder or checkpoint) instead"))
        if not str(c.prompt).strip():
            problems.append(ConfigIssue("system.prompt", "no editing instruction", "",
                                        'e.g. system.prompt="Turn him into a clown"'))
        for key, value, ok, how in (
                ("edit_rate", c.edit_rate, c.edit_rate >= 1, "an integer >= 1"),
                ("edit_count", c.edit_count, c.edit_count >= 0, "an integer >= 0"),
                ("diffusion_steps", c.diffusion_steps, c.diffusion_steps >= 1, "an integer >= 1"),
                ("edit_start_step", c.edit_start_step, c.edit_start_step >= 0, "an integer >= 0"),
                ("t_min", c.t_min, 0.0 <= c.t_min <= c.t_max, "a number in [0, t_max]"),
                ("t_max", c.t_max, c.t_min <= c.t_max <= 1.0, "a number in [t_min, 1]"),
                ("base", c.base, c.base in ("auto", "nerf", "gaussians"), "auto, nerf or gaussians")):
            if not ok:
                problems.append(ConfigIssue(f"system.{key}", f"invalid value {value!r}", "", f"use {how}"))
        if problems:
            raise ConfigError(problems)
        super().configure()  # type: ignore[misc]
        self.guidance: Any = None
        self._text_embeddings: Optional[torch.Tensor] = None
        self._edit_counter = 0  # edits done so far: the next view is _edit_counter % n
        self._edited: Dict[int, torch.Tensor] = {}  # view -> uint8 [H, W, 3], the current edited set
        self._history: List[Tuple[int, int, int]] = []  # (step, view, starting timestep T)
        self._restore_pending = False
        self._source_ckpt: Optional[str] = None
        self._source_loaded = False

    def objective_kind(self) -> str:  # trained on the edited images (the guidance edits them, it is no loss)
        return "photometric"

    # modules follow the source's step (proposal annealing, SH degree, ...); the in2n step drives the rest
    def do_update_step(self, epoch: int, global_step: int, on_load_weights: bool = False, _seen: Any = None) -> None:
        super().do_update_step(epoch, global_step + self._source_step, on_load_weights=on_load_weights,  # type: ignore
                               _seen=_seen)

    def do_update_step_end(self, epoch: int, global_step: int, _seen: Any = None) -> None:
        super().do_update_step_end(epoch, global_step + self._source_step, _seen=_seen)  # type: ignore[misc]

    # ------------------------------------------------------------------ the source reconstruction
    def setup(self, stage: str) -> None:
        super().setup(stage)  # type: ignore[misc]  # the scene handshake first (gaussians may initialise from it)
        if stage != "fit" or self.resumed or self._source_loaded:  # type: ignore[attr-defined]
            return
        # missing weights stop the run before anything is loaded
        preflight_guidance(self.cfg.guidance_type, self.cfg.guidance)
        self._load_source(self._datamodule())

    def _datamodule(self) -> Any:
        trainer = self._trainer  # type: ignore[attr-defined]
        dm = trainer.datamodule if trainer is not None else None
        if not isinstance(dm, MultiviewDataModule):
            raise RuntimeError("in2n-system needs a data module with editable training images (multiview for NeRFs, "
                               "multiview-images for gaussians)")
        return dm

    def _load_source(self, dm: Any) -> None:
        from omegaconf import OmegaConf

        from threestudio.utils.misc import load_module_weights
        from threestudio.utils.trials import CONFIG_DIR, resolve_checkpoint, trial_of_checkpoint

        src = self.cfg.source
        if not src:
            raise ConfigError([ConfigIssue(
                "system.source", "no reconstruction to start from", "",
                "train one first (python launch.py --config configs/nerf-capture.yaml --train data.dataroot=...), "
                "then set system.source=<its trial folder>")])
        if str(src).startswith("LAST:"):
            ckpt, prev = self._newest_matching_trial(str(src)[len("LAST:"):], dm)
        else:
            ckpt = resolve_checkpoint(str(src), key="system.source")
            parsed = os.path.join(trial_of_checkpoint(ckpt), CONFIG_DIR, "parsed.yaml")
            if not os.path.isfile(parsed):
                raise ConfigError([ConfigIssue("system.source", f"{ckpt} is not inside a trial folder written by "
                                               f"launch.py (no {parsed})", "",
                                               "point at a reconstruction trial folder or its ckpts/last.ckpt")])
            prev = OmegaConf.load(parsed)
            problems = self._data_mismatches(prev, dm)
            if problems:
                raise ConfigError([ConfigIssue("system.source", f"{ckpt} was trained on other data: {p}", "",
                                               "run in2n with the reconstruction's data settings (data.dataroot, "
                                               "data.test_every, ...) or name the matching trial") for p in problems])
        self._check_modules(prev, ckpt)
        state, epoch, step = load_module_weights(ckpt, map_location="cpu")
        try:
            result = self.load_state_dict(state, strict=False)  # type: ignore[attr-defined]
        except RuntimeError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()][1:6]
            raise ConfigError([ConfigIssue("system.source", f"the weights of {ckpt} do not fit this run's modules: "
                                           f"{'; '.join(lines)[:600]}", "",
                                           "use the reconstruction's recipe settings")]) from None
        if result.missing_keys or result.unexpected_keys:
            parts = []
            if result.missing_keys:
                parts.append(f"missing {', '.join(result.missing_keys[:8])}")
            if result.unexpected_keys:
                parts.append(f"unexpected {', '.join(result.unexpected_keys[:8])}")
            raise ConfigError([ConfigIssue("system.source", f"the weights of {ckpt} do not fit this run's modules: "
                                           f"{'; '.join(parts)}", "", "use the reconstruction's recipe settings")])
        self._source_step = int(step) if self.cfg.continue_source_step else 0
        self._source_ckpt = ckpt
        self._source_loaded = True
        self.do_update_step(epoch, 0, on_load_weights=True)
        info(f"in2n: starting from {ckpt} ({prev.get('system_type')}, step {step}); prompt: {self.cfg.prompt!r}")

    def _newest_matching_trial(self, folder: str, dm: Any) -> Tuple[str, Any]:
        from omegaconf import OmegaConf

        from threestudio.utils.trials import CKPT_DIR, CONFIG_DIR, LAST_CKPT, list_trials

        trials = list_trials(os.path.abspath(os.path.expanduser(folder)))
        seen = []
        for trial in reversed(trials):  # newest first
            parsed = os.path.join(trial, CONFIG_DIR, "parsed.yaml")
            if not os.path.isfile(parsed):
                continue
            prev = OmegaConf.load(parsed)
            mismatch = self._data_mismatches(prev, dm)
            if not mismatch:
                return os.path.join(trial, CKPT_DIR, LAST_CKPT), prev
            seen.append(f"{os.path.basename(trial)} ({mismatch[0]})")
        root = dm._parse()["root"]
        found = f"; the trials there are of other data: {'; '.join(seen[:5])}" if seen else ""
        raise ConfigError([ConfigIssue(
            "system.source", f"no finished reconstruction of {root} under {folder}{found}", "",
            "train it first with the same data settings, or set system.source=<trial folder>")])

    @staticmethod
    def _data_mismatches(prev: Any, dm: Any) -> List[str]:
        """Differences between the source trial's data settings and this run's that change the training images or
        the world frame (empty: compatible)."""
        from omegaconf import OmegaConf

        from threestudio.data.multiview import DatasetError, _resolve_dataroot

        data = OmegaConf.to_container(prev.get("data", {}), resolve=True) if prev.get("data") is not None else {}
        mine = _plain_dict(dm.cfg)
        out = []
        try:
            theirs_root = os.path.realpath(_resolve_dataroot(str(data.get("dataroot", ""))))
        except DatasetError:
            theirs_root = str(data.get("dataroot"))
        my_root = os.path.realpath(_resolve_dataroot(str(mine.get("dataroot", ""))))
        if theirs_root != my_root:
            out.append(f"data.dataroot {data.get('dataroot')!r} (this run: {mine.get('dataroot')!r})")
        defaults = type(dm).Config()
        for k in DATA_KEYS:
            a, b = data.get(k, getattr(defaults, k, None)), mine.get(k)
            if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
                a, b = list(a) if a is not None else a, list(b) if b is not None else b
            if a != b:
                out.append(f"data.{k}={a!r} (this run: {b!r})")
        return out

    def _check_modules(self, prev: Any, ckpt: str) -> None:
        from omegaconf import OmegaConf

        from threestudio.systems.utils import _plain

        system = prev.get("system", {})
        problems = []
        for slot in MODULE_SLOTS:
            theirs, mine = system.get(f"{slot}_type"), getattr(self.cfg, f"{slot}_type")
            if theirs != mine:
                problems.append(ConfigIssue(f"system.{slot}_type", f"{ckpt} has a {theirs!r} {slot}, this run "
                                            f"{mine!r}", "", "use the in2n recipe of the reconstruction's kind "
                                            "(in2n.yaml for nerf-capture, in2n-gaussians.yaml for gaussian-capture)"))
        if problems:
            raise ConfigError(problems)
        diffs: List[str] = []
        for slot in MODULE_SLOTS:
            theirs = OmegaConf.to_container(system.get(slot), resolve=True) if system.get(slot) is not None else {}
            _diff(theirs or {}, _plain(getattr(self.cfg, slot)) or {}, f"system.{slot}", diffs)
        if diffs:
            warn(f"in2n: module settings differ from the source trial's ({ckpt}): {'; '.join(diffs[:10])}"
                 + (f" (and {len(diffs) - 10} more)" if len(diffs) > 10 else ""))

    # ------------------------------------------------------------------ guidance (training only)
    def build_guidance(self) -> None:
        cfg = self.cfg
        self.guidance = build_guidance(cfg.guidance_type, cfg.guidance, self.device)  # type: ignore[attr-defined]
        self._text_embeddings = self.guidance.encode_prompt(cfg.prompt)
        self.guidance.release_text_encoder()

    def on_fit_start(self) -> None:
        super().on_fit_start()  # type: ignore[misc]
        if self.guidance is None:
            self.build_guidance()
        dm = self._datamodule()
        if self._restore_pending:
            for j, img in sorted(self._edited.items()):
                dm.replace_train_image(j, img.float() / 255.0)
            self._restore_pending = False
            info(f"in2n: restored {len(self._edited)} edited views from the checkpoint; {self._edit_counter} edits "
                 f"so far, next view {self._edit_counter % max(dm.n_train_views, 1)}")
            self._sync_edits_folder(dm)
        self._write_frames(dm)

    def on_fit_end(self) -> None:
        if self.cfg.release_guidance_after_fit and self.guidance is not None:
            self.guidance = None
            from threestudio.utils.misc import cleanup

            cleanup()
        super().on_fit_end()  # type: ignore[misc]

    # ------------------------------------------------------------------ the dataset update
    def edit_due(self, step: int) -> bool:
        c = self.cfg
        return c.edit_count > 0 and step >= c.edit_start_step and (step - c.edit_start_step) % c.edit_rate == 0

    def run_due_edits(self, step: int) -> List[int]:
        """Re-edit ``edit_count`` views if ``step`` is an update step; returns the views edited."""
        if not self.edit_due(step):
            return []
        dm = self._datamodule()
        n = dm.n_train_views
        done = []
        for _ in range(self.cfg.edit_count):
            j = self._edit_counter % n
            self.edit_view(dm, j, step)
            self._edit_counter += 1
            done.append(j)
        self._write_history()
        return done

    def edit_seed(self, step: int, view: int) -> int:
        return ((int(self.cfg.edit_seed) * 1_000_003 + int(step)) * 100_003 + int(view)) % (2**63 - 1)

    def edit_view(self, dm: Any, j: int, step: int) -> torch.Tensor:
        """Render training view ``j``, edit it conditioned on its original photo, and train on the edit."""
        if self.guidance is None or self._text_embeddings is None:
            raise RuntimeError("in2n-system: the guidance is built in on_fit_start; an edit ran without it")
        c = self.cfg
        view = dm.train_view(j)
        bg = view["background"]
        original = dm.original_train_image(j)
        original = original[..., :3] + bg * (1.0 - original[..., 3:])
        render = self.render_train_view(view).clamp(0.0, 1.0)
        gen = torch.Generator(device="cpu").manual_seed(self.edit_seed(step, j))
        edited, details = self.guidance.edit_image(
            render[None], original[None].to(render), self._text_embeddings, t_min=c.t_min, t_max=c.t_max,
            diffusion_steps=c.diffusion_steps, guidance_scale=c.guidance_scale,
            image_guidance_scale=c.image_guidance_scale, generator=gen, return_info=True)
        img = (edited[0].detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu()
        dm.replace_train_image(j, img.float() / 255.0)
        self._edited[j] = img
        self._history.append((int(step), int(j), int(details["T"])))
        self._write_edit(j, img)
        return img

    def render_train_view(self, view: Dict[str, Any]) -> torch.Tensor:  # pragma: no cover - per base system
        raise NotImplementedError

    # ------------------------------------------------------------------ files
    def _write_edit(self, j: int, img: torch.Tensor) -> None:
        if not self._is_writer:  # type: ignore[attr-defined]
            return
        from threestudio.utils.saving import atomic_write_bytes, encode_png

        atomic_write_bytes(self.get_save_path(f"{EDITS_DIR}/{j}.png"), encode_png(img.numpy()))  # type: ignore

    def _write_history(self) -> None:
        if not self._is_writer:  # type: ignore[attr-defined]
            return
        from threestudio.utils.saving import atomic_write_text

        rows = ["step,view,T"] + [f"{s},{j},{t}" for s, j, t in self._history]
        atomic_write_text(self.get_save_path(f"{EDITS_DIR}/edits.csv"), "\n".join(rows) + "\n")  # type: ignore

    def _write_frames(self, dm: Any) -> None:
        if not self._is_writer:  # type: ignore[attr-defined]
            return
        from threestudio.utils.saving import atomic_write_text

        frames = []
        for j in range(dm.n_train_views):
            view = dm.train_view(j)
            frames.append({"view": j, "frame": view["frame"], "image_path": view["image_path"]})
        atomic_write_text(self.get_save_path(f"{EDITS_DIR}/frames.json"),  # type: ignore[attr-defined]
                          json.dumps({"prompt": self.cfg.prompt, "source": self._source_ckpt, "views": frames},
                                     indent=1))

    def _sync_edits_folder(self, dm: Any) -> None:
        """After a resume: save/edits holds exactly the checkpoint's edited set and history."""
        if not self._is_writer:  # type: ignore[attr-defined]
            return
        folder = os.path.join(self.get_save_dir(), EDITS_DIR)  # type: ignore[attr-defined]
        if os.path.isdir(folder):
            keep = {f"{j}.png" for j in self._edited}
            for name in os.listdir(folder):
                if name.endswith(".png") and name[:-4].isdigit() and name not in keep:
                    os.remove(os.path.join(folder, name))
        for j, img in self._edited.items():
            self._write_edit(j, img)
        self._write_history()

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint[IN2N_KEY] = {
            "version": STATE_VERSION, "edited": {int(j): v.clone() for j, v in self._edited.items()},
            "edit_counter": int(self._edit_counter), "history": [list(h) for h in self._history],
            "source_step": int(self._source_step), "source": self._source_ckpt, "prompt": self.cfg.prompt,
        }

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        state = checkpoint.get(IN2N_KEY)
        if state is None:
            return
        self._edited = {int(j): v.to(torch.uint8).cpu() for j, v in state["edited"].items()}
        self._edit_counter = int(state["edit_counter"])
        self._history = [tuple(int(x) for x in h) for h in state["history"]]  # type: ignore[misc]
        self._source_step = int(state.get("source_step", 0))
        self._source_ckpt = state.get("source")
        self._source_loaded = True
        self._restore_pending = True
        if state.get("prompt") not in (None, self.cfg.prompt):
            info(f"in2n: the checkpoint was edited with {state['prompt']!r}; continuing with {self.cfg.prompt!r}")


def _plain_dict(cfg: Any) -> Dict[str, Any]:
    import dataclasses

    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)  # type: ignore[arg-type]
    return dict(cfg)


def _diff(a: Any, b: Any, prefix: str, out: List[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            _diff(a.get(k), b.get(k), f"{prefix}.{k}", out)
    elif a != b:
        out.append(f"{prefix}: {a!r} -> {b!r}")


class _In2NNeRF(In2NMixin, NeRFReconstruction):
    """in2n on a ``nerf-reconstruction`` source (ray renderers, ``multiview`` data)."""

    Config = In2NConfig
    cfg: In2NConfig

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.run_due_edits(self.true_global_step)
        return super().training_step(batch, batch_idx)  # its photometric objective adds lambda_l1's L1

    @torch.no_grad()
    def render_train_view(self, view: Dict[str, Any]) -> torch.Tensor:
        """The scene at training view ``view`` [H, W, 3]: its training rays, its appearance code (the renderer runs
        in training mode, as nerfstudio's does for Instruct-NeRF2NeRF), chunked, without gradients."""
        from threestudio.ops import cameras as cam

        H, W, j = int(view["height"]), int(view["width"]), int(view["index"])
        if "rays_d" in view:
            rays_o, rays_d = view["rays_o"], view["rays_d"]
        else:
            fx, fy, cx, cy = (float(v) for v in view["intrinsics"])
            rays_o, rays_d = cam.get_rays(cam.get_ray_directions(H, W, (fx, fy), principal=(cx, cy)),
                                          view["c2w"][None].float(), normalize=True)
        o = rays_o.reshape(-1, 3).to(self.device)
        d = rays_d.reshape(-1, 3).to(self.device)
        bg = view["background"].to(self.device)
        chunk = int(self.cfg.edit_render_chunk or getattr(self.renderer.cfg, "eval_chunk_size", 16384))
        parts = []
        for i in range(0, o.shape[0], chunk):
            sl = slice(i, i + chunk)
            idx = torch.full((o[sl].shape[0],), j, dtype=torch.long, device=self.device)
            out = self.renderer(o[sl], d[sl], bg_color=bg, image_index=idx)
            parts.append(out["comp_rgb"].reshape(-1, 3).float())
        return torch.cat(parts, 0).reshape(H, W, 3)


class _In2NGaussians(In2NMixin, GaussianSplattingSystem):
    """in2n on a ``gaussian-splatting-system`` source (``multiview-images`` data)."""

    Config = In2NConfig
    cfg: In2NConfig

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.run_due_edits(self.true_global_step)
        return super().training_step(batch, batch_idx)

    @torch.no_grad()
    def render_train_view(self, view: Dict[str, Any]) -> torch.Tensor:
        out = self.renderer(c2w=view["c2w"][None].to(self.device), height=int(view["height"]),
                            width=int(view["width"]), intrinsics=view["intrinsics"][None].to(self.device),
                            bg_color=view["background"].to(self.device))
        return out["comp_rgb"][0].float()


def _wants_gaussians(cfg: In2NConfig) -> bool:
    if cfg.base != "auto":
        return cfg.base == "gaussians"
    geometry = find(cfg.geometry_type, "geometry", "system.geometry_type")
    return isinstance(geometry, type) and issubclass(geometry, GaussianSplatting)


@threestudio.register("in2n-system")
class In2NSystem:
    """``in2n-system``: builds the in2n system for the source's kind (``base``: auto | nerf | gaussians), a
    ``nerf-reconstruction`` or a ``gaussian-splatting-system`` with the dataset update (see the module docstring)."""

    __threestudio_family__ = "system"
    Config = In2NConfig

    def __new__(cls, cfg: Any = None, resumed: bool = False) -> Any:  # type: ignore[misc]
        c = parse_structured(In2NConfig, cfg)
        impl = _In2NGaussians if _wants_gaussians(c) else _In2NNeRF
        return impl(cfg, resumed=resumed)

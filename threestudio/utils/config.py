"""Configs: YAML recipes that extend base files, dotlist overrides, resolvers, and start-up validation.

A recipe may name base files with ``extends: base.yaml`` (or a list); paths are relative to the recipe. Bases are
merged first, then the recipe, then command-line overrides (``system.loss.lambda_sparsity=10``). A mapping that
should replace its base's mapping instead of merging into it carries ``__replace__: true``.

:func:`load_config` validates the whole tree before anything is built: unknown keys, wrong types, missing ``???``
values and unknown module names are all collected and raised together as one :class:`ConfigError`, each with its
key path, the file (and line) that set it, and a close-match suggestion.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import difflib
import functools
import importlib
import importlib.util
import inspect
import os
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from threestudio.registry import RegistryError, class_name, find_config
from threestudio.utils.schedule import ScheduleError, is_schedule_mapping_type, is_schedule_type, parse_schedule

REPLACE_KEY = "__replace__"
EXTENDS_KEY = "extends"
CLI_SOURCE = "command line"


# --------------------------------------------------------------------------------------------------- resolvers
def _cmax(value: Any) -> float:
    """The largest value a number or a schedule takes (its values, never its steps)."""
    return parse_schedule(value).max()


def _register_resolvers() -> None:
    resolvers = {
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b,
        "idiv": lambda a, b: a // b,
        "basename": lambda p: os.path.basename(str(p)),
        "rmspace": lambda s, sub="_": str(s).replace(" ", sub),
        "tuple2": lambda s: [float(s), float(s)],
        "gt0": lambda s: s > 0,
        "not": lambda s: not s,
        "cmaxgt0": lambda s: _cmax(s) > 0,
        "cmaxgt0orcmaxgt0": lambda a, b: _cmax(a) > 0 or _cmax(b) > 0,
        "calc_exp_lr_decay_rate": lambda factor, n: factor ** (1.0 / n),
    }
    resolvers["now"] = lambda fmt="%Y%m%d-%H%M%S": datetime.datetime.now().strftime(fmt)
    for name, fn in resolvers.items():
        if OmegaConf.has_resolver(name):
            continue
        # cached 'now': every use in one run sees the same time
        if hasattr(OmegaConf, "register_resolver"):  # omegaconf >= 2.4
            OmegaConf.register_resolver(name, fn, use_cache=name == "now")
        else:  # pragma: no cover - omegaconf 2.3
            OmegaConf.register_new_resolver(name, fn, use_cache=name == "now")


_register_resolvers()


# --------------------------------------------------------------------------------------------------- errors
@dataclass
class ConfigIssue:
    key: str
    message: str
    source: str = ""
    suggestion: str = ""

    def format(self) -> str:
        where = f"  [set in {self.source}]" if self.source else ""
        hint = f"\n      -> {self.suggestion}" if self.suggestion else ""
        return f"  - {self.key}: {self.message}{where}{hint}"


class ConfigError(ValueError):
    """One or more problems in a config; ``issues`` lists them all."""

    def __init__(self, issues: Sequence[ConfigIssue], header: str = "Invalid config"):
        self.issues = list(issues)
        lines = [f"{header}: {len(self.issues)} problem{'s' if len(self.issues) != 1 else ''} found."]
        lines += [i.format() for i in self.issues]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------------------------------- loading
def _yaml_lines(path: str, text: str) -> Dict[str, int]:
    """Map dotted key paths to their 1-based line numbers in a YAML file (best effort)."""
    lines: Dict[str, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, f"{prefix}.{i}")

    walk(root, "")
    return lines


def _leaf_paths(node: Any, prefix: str = "") -> List[str]:
    out: List[str] = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            key = f"{prefix}.{k}" if prefix else str(k)
            out.append(key)
            out += _leaf_paths(node._get_node(k), key)
    return out


def _apply_replace_markers(base: DictConfig, child: DictConfig, prefix: str = "") -> None:
    """Where ``child`` has ``__replace__: true``, drop the base's mapping at that path so the child replaces it."""
    for k in list(child.keys()):
        sub = child._get_node(k)
        if isinstance(sub, DictConfig):
            if sub.get(REPLACE_KEY, False) is True:
                del sub[REPLACE_KEY]
                if k in base:
                    del base[k]
            elif k in base and isinstance(base._get_node(k), DictConfig):
                _apply_replace_markers(base._get_node(k), sub, f"{prefix}.{k}")


def _display(path: str) -> str:
    try:
        rel = os.path.relpath(path)
        return rel if not rel.startswith("..") else path
    except ValueError:
        return path


def load_yaml_tree(path: str, _stack: Tuple[str, ...] = ()) -> Tuple[DictConfig, Dict[str, str]]:
    """Load a recipe and its ``extends`` chain. Returns the merged tree and {key path: "file:line"}."""
    path = os.path.abspath(path)
    if path in _stack:
        chain = " -> ".join(_display(p) for p in _stack + (path,))
        raise ConfigError([ConfigIssue(EXTENDS_KEY, f"circular 'extends' chain: {chain}", _display(path))])
    if not os.path.isfile(path):
        raise ConfigError(
            [ConfigIssue(EXTENDS_KEY if _stack else "--config", f"config file not found: {path}",
                         _display(_stack[-1]) if _stack else CLI_SOURCE)]
        )
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        cfg = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except Exception as e:
        raise ConfigError([ConfigIssue("<file>", f"cannot parse YAML: {e}", _display(path))]) from e
    if not isinstance(cfg, DictConfig):
        raise ConfigError([ConfigIssue("<file>", "a config file must hold a mapping at the top", _display(path))])
    lines = _yaml_lines(path, text)
    disp = _display(path)

    bases = cfg.pop(EXTENDS_KEY, None)
    if bases is None:
        base_list: List[str] = []
    elif isinstance(bases, str):
        base_list = [bases]
    elif isinstance(bases, ListConfig):
        base_list = [str(b) for b in bases]
    else:
        raise ConfigError([ConfigIssue(EXTENDS_KEY, "must be a file name or a list of file names", disp)])

    merged = OmegaConf.create({})
    sources: Dict[str, str] = {}
    for b in base_list:
        bpath = b if os.path.isabs(b) else os.path.join(os.path.dirname(path), b)
        bcfg, bsrc = load_yaml_tree(bpath, _stack + (path,))
        merged = OmegaConf.merge(merged, bcfg)
        sources.update(bsrc)
    _apply_replace_markers(merged, cfg)
    for key in _leaf_paths(cfg):
        sources[key] = f"{disp}:{lines[key]}" if key in lines else disp
    merged = OmegaConf.merge(merged, cfg)
    return merged, sources


def missing_overrides(path: str, values: Dict[str, Any]) -> List[str]:
    """``key=value`` for each of ``values``' keys that the recipe at ``path`` (with the files it extends) leaves
    mandatory ('???'): what a test or a bench must add to run every recipe."""
    tree, _ = load_yaml_tree(path)
    out = []
    for key, value in values.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(tree, parent) if parent else tree
        if node is not None and leaf in node.keys() and OmegaConf.is_missing(node, leaf):
            out.append(f"{key}={value}")
    return out


def _parse_overrides(cli_args: Sequence[str]) -> Tuple[DictConfig, List[ConfigIssue]]:
    issues: List[ConfigIssue] = []
    good: List[str] = []
    for arg in cli_args:
        if "=" not in arg or arg.startswith("-"):
            issues.append(
                ConfigIssue(arg, "not a config override; overrides look like key.path=value "
                            "(e.g. system.loss.lambda_sparsity=10)", CLI_SOURCE)
            )
            continue
        try:
            OmegaConf.from_dotlist([arg])
            good.append(arg)
        except Exception as e:
            issues.append(ConfigIssue(arg.split("=")[0], f"cannot parse override '{arg}': {e}", CLI_SOURCE))
    return OmegaConf.from_dotlist(good), issues


# --------------------------------------------------------------------------------------------------- schema
@dataclass
class ExperimentConfig:
    """The top level of every recipe."""

    name: str = "default"
    description: str = ""
    tag: str = ""
    seed: int = 0
    use_timestamp: bool = True
    timestamp: Optional[str] = None
    exp_root_dir: str = "outputs"
    # derived at load time; setting them in a recipe has no effect
    exp_dir: str = ""
    trial_name: str = ""
    trial_dir: str = ""
    n_gpus: int = 1
    resume: Optional[str] = None
    data_type: str = ""
    data: dict = field(default_factory=dict)
    system_type: str = ""
    system: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict)
    # float32 matrix products on a GPU (torch.set_float32_matmul_precision): "high" lets them use TF32 tensor cores
    # (the NeRF MLPs, amortized generators); "highest" keeps full float32. Not applied on CPU-only runs
    float32_matmul_precision: str = "high"


MATMUL_PRECISIONS = ("highest", "high", "medium")


# which family a "<slot>_type" key asks for
_SLOT_FAMILIES = {
    "data": "data",
    "system": "system",
    "geometry": "geometry",
    "material": "material",
    "background": "background",
    "renderer": "renderer",
    "guidance": "guidance",
    "prompt_processor": "prompt-processor",
    "exporter": "exporter",
}


def slot_family(slot: str) -> Optional[str]:
    """Family asked for by ``<slot>_type``: exact slot names first, then a family word inside the slot name."""
    if slot in _SLOT_FAMILIES:
        return _SLOT_FAMILIES[slot]
    for word, fam in _SLOT_FAMILIES.items():
        if slot.endswith(word) or slot.startswith(word + "_"):
            return fam
    return None


def _suggest(key: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return ""


class _Validator:
    def __init__(self, sources: Dict[str, str]):
        self.sources = sources
        self.issues: List[ConfigIssue] = []

    def source(self, key: str) -> str:
        k = key
        while k:
            if k in self.sources:
                return self.sources[k]
            k = k.rpartition(".")[0]
        return "defaults" if self.sources else ""

    def add(self, key: str, message: str, suggestion: str = "") -> None:
        self.issues.append(ConfigIssue(key, message, self.source(key), suggestion))

    # ---- leaves: missing values and interpolations
    def check_leaves(self, node: Any, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for k in node.keys():
                key = f"{prefix}.{k}" if prefix else str(k)
                if OmegaConf.is_missing(node, k):
                    self.add(key, "mandatory value '???' was not set",
                             f"set it in the recipe or on the command line: {key}=...")
                    continue
                try:
                    child = node[k]
                except OmegaConfBaseException as e:
                    self.add(key, f"cannot resolve value: {_short(e)}")
                    continue
                self.check_leaves(child, key)
        elif isinstance(node, ListConfig):
            for i in range(len(node)):
                key = f"{prefix}.{i}"
                if OmegaConf.is_missing(node, i):
                    self.add(key, "mandatory value '???' was not set")
                    continue
                try:
                    child = node[i]
                except OmegaConfBaseException as e:
                    self.add(key, f"cannot resolve value: {_short(e)}")
                    continue
                self.check_leaves(child, key)

    # ---- a mapping against a Config dataclass
    def check_dataclass(self, node: Any, schema: type, prefix: str, owner: str) -> None:
        if node is None:
            return
        if not isinstance(node, DictConfig):
            self.add(prefix, f"expected a mapping (the config of {owner}), got {type(node).__name__}")
            return
        fields = {f.name: f for f in dataclasses.fields(schema)}
        hints = _type_hints(schema)
        extras = _type_hints(schema, include_extras=True)
        try:
            typed = OmegaConf.structured(schema)
        except Exception as e:  # a Config OmegaConf cannot represent: report, don't crash
            self.add(prefix, f"{owner}.Config cannot be used as a config schema: {_short(e)}")
            return
        for k in node.keys():
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in fields:
                known = sorted(fields)
                self.add(key, f"unknown key for {owner}", _suggest(str(k), known) or
                         f"known keys: {', '.join(known)}")
                continue
            if OmegaConf.is_missing(node, k):
                continue  # reported by check_leaves
            value = node._get_node(k)
            ftype = hints.get(k, fields[k].type)
            sub_schema = _dataclass_type(ftype)
            if sub_schema is not None and isinstance(value, DictConfig):
                self.check_dataclass(value, sub_schema, key, f"{owner}.{k}")
                continue
            try:
                with warnings.catch_warnings():  # omegaconf 2.4 warns on list->tuple and int->float conversions
                    warnings.simplefilter("ignore", FutureWarning)
                    typed[k] = _int_to_float(node[k], ftype)
            except OmegaConfBaseException as e:
                self.add(key, f"wrong type for {owner}: {_type_message(e, node, k, ftype)}")
                continue
            except Exception:
                continue  # unresolvable values are reported by check_leaves
            problem = range_problem(typed[k], fields[k].metadata)
            if problem:
                self.add(key, f"{problem} for {owner}, got {typed[k]!r}")
            if is_schedule_type(extras.get(k)):
                self.check_schedule(node[k], key, owner)
            elif is_schedule_mapping_type(extras.get(k)) and isinstance(node[k], DictConfig):
                sub = node[k]
                for name in sub.keys():
                    if str(name).startswith("lambda_") and not OmegaConf.is_missing(sub, name):
                        try:
                            value = sub[name]
                        except OmegaConfBaseException:
                            continue  # reported by check_leaves
                        self.check_schedule(value, f"{key}.{name}", owner)
        for name, f in fields.items():
            if name in node:
                continue
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.add(f"{prefix}.{name}" if prefix else name, f"required by {owner} but not set")
            elif f.default == "???":
                self.add(f"{prefix}.{name}" if prefix else name, f"mandatory value '???' of {owner} was not set")
        self.check_slots(node, schema, prefix)

    def check_schedule(self, value: Any, key: str, owner: str) -> None:
        """A ``Schedule`` field: parse it now, so that a malformed one stops the run before anything is built."""
        if value is None:
            return  # Optional[Schedule]; a None where one is required is a type error reported above
        try:
            parse_schedule(value, key)
        except ScheduleError as e:
            self.add(key, f"not a schedule for {owner}: {e.problem}",
                     "write a number (a constant), [start_step, start_value, end_value, end_step], "
                     "[start_value, end_value, end_step] or piecewise [s0, v0, v1, s1, v2, s2, ...]; integer steps "
                     "count global steps, float steps count epochs (e.g. [0, 0.98, 0.5, 5000])")

    def check_slots(self, node: DictConfig, schema: type, prefix: str) -> None:
        """Validate each ``<slot>_type`` name and its ``<slot>`` mapping against the named class's Config."""
        defaults = {f.name: f.default for f in dataclasses.fields(schema)}
        slot_names = set()
        for k in list(node.keys()) + [n for n in defaults if n.endswith("_type")]:
            # "<slot>_type" names a module only when "<slot>" (its settings) exists too, e.g. geometry_type +
            # geometry; a plain option such as normal_type is not a module slot
            if isinstance(k, str) and k.endswith("_type"):
                slot = k[: -len("_type")]
                if slot in defaults or slot in node:
                    slot_names.add(slot)
        for slot in sorted(slot_names):
            type_key = f"{slot}_type"
            name = node.get(type_key, None) if type_key in node else defaults.get(type_key)
            if not isinstance(name, str) or name in ("", "???"):
                continue
            key = f"{prefix}.{type_key}" if prefix else type_key
            family = slot_family(slot)
            try:  # the Config alone: its module imports neither Lightning nor diffusers (see find_config)
                sub_schema = find_config(name, family=family, key=key)
            except RegistryError as e:
                self.add(key, str(e))
                continue
            if sub_schema is None or not dataclasses.is_dataclass(sub_schema):
                continue
            owner = f"{class_name(name)} ('{name}')"
            if slot in node:
                sub = node._get_node(slot)
                if sub is None or (isinstance(sub, DictConfig) and sub._is_none()):
                    continue
                self.check_dataclass(sub, sub_schema, f"{prefix}.{slot}" if prefix else slot, owner)
            else:
                # nothing set: the Config's own defaults must be complete
                self.check_dataclass(OmegaConf.create({}), sub_schema, f"{prefix}.{slot}" if prefix else slot,
                                     owner)

    def check_kwargs(self, node: Any, params: Optional[Sequence[str]], prefix: str, owner: str) -> None:
        """Keys of a mapping passed verbatim as keyword arguments (trainer, checkpoint); ``params``: the parameter
        names of the function they go to (None: it takes any keyword)."""
        if not isinstance(node, DictConfig) or params is None:
            return
        names = [p for p in params if p != "self"]
        for k in node.keys():
            if k not in params:
                self.add(f"{prefix}.{k}", f"not an argument of {owner}",
                         _suggest(str(k), names) or f"see the {owner} documentation")


def bounded(default: Any, *, ge: Optional[float] = None, gt: Optional[float] = None, le: Optional[float] = None,
            lt: Optional[float] = None) -> Any:
    """A dataclass field whose numeric value the config validator checks at start-up, e.g.
    ``num_samples_per_ray: int = bounded(512, ge=1)``. Schedules and other non-numbers are not checked."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, metadata={"bounds": bounds})


def range_problem(value: Any, metadata: Any) -> str:
    """Why ``value`` is outside its field's bounds (see :func:`bounded`), or ''."""
    bounds = (metadata or {}).get("bounds") if metadata else None
    if not bounds or isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    if value != value:  # NaN
        return "must be a number (got NaN)"
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    ok = {"ge": value >= bounds.get("ge", 0), "gt": value > bounds.get("gt", 0), "le": value <= bounds.get("le", 0),
          "lt": value < bounds.get("lt", 0)}
    bad = [f"{words[k]} {bounds[k]:g}" for k in bounds if not ok[k]]
    return ("must be " + " and ".join(f"{words[k]} {bounds[k]:g}" for k in bounds)) if bad else ""


def _check_trainer_steps(v: "_Validator", trainer: Any) -> None:
    """Training runs on an endless stream of batches (no epochs), so it needs a positive ``max_steps``."""
    if not isinstance(trainer, DictConfig) or "max_steps" not in trainer:
        return
    try:
        steps = trainer["max_steps"]
    except OmegaConfBaseException:
        return
    if isinstance(steps, bool) or not isinstance(steps, int):
        v.add("trainer.max_steps", f"must be a whole number of training steps, got {steps!r}",
              "e.g. trainer.max_steps=5000")
    elif steps <= 0:
        v.add("trainer.max_steps", f"must be a positive number of training steps, got {steps} (training draws an "
              "endless stream of batches, so there is no epoch to end it: -1 would never stop)",
              "e.g. trainer.max_steps=5000")
    for key in ("val_check_interval", "log_every_n_steps"):
        val = trainer.get(key) if key in trainer else None
        if isinstance(val, (int, float)) and not isinstance(val, bool) and val <= 0:
            v.add(f"trainer.{key}", f"must be positive, got {val}")


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return msg[0] if msg else type(e).__name__


def _type_message(e: Exception, node: DictConfig, key: Any, ftype: Any) -> str:
    try:
        raw = node._get_node(key)._value()
    except Exception:
        raw = "?"
    tname = getattr(ftype, "__name__", None) or str(ftype).replace("typing.", "")
    return f"expected {tname}, got {raw!r} ({_short(e)})"


def _dataclass_type(ftype: Any) -> Optional[type]:
    """The dataclass behind a field type (``SomeConfig`` or ``Optional[SomeConfig]``), else None."""
    if dataclasses.is_dataclass(ftype):
        return ftype
    for a in getattr(ftype, "__args__", None) or ():
        if dataclasses.is_dataclass(a):
            return a
    return None


def _is_float_type(ftype: Any) -> bool:
    return ftype is float or (float in (getattr(ftype, "__args__", None) or ()) and
                               int not in (getattr(ftype, "__args__", None) or ()))


def _int_to_float(value: Any, ftype: Any) -> Any:
    """``radius: 2`` for a float field is normal in recipes: convert it ourselves (omegaconf 2.4 warns)."""
    if isinstance(value, int) and not isinstance(value, bool) and _is_float_type(ftype):
        return float(value)
    return value


def _coerce_ints(cfg: DictConfig, schema: type) -> None:
    hints = _type_hints(schema)
    for k in list(cfg.keys()):
        if k not in hints or OmegaConf.is_missing(cfg, k) or OmegaConf.is_interpolation(cfg, k):
            continue
        value = cfg[k]
        sub = _dataclass_type(hints[k])
        if sub is not None and isinstance(value, DictConfig):
            _coerce_ints(value, sub)
        else:
            new = _int_to_float(value, hints[k])
            if new is not value:
                cfg[k] = new


def _type_hints(schema: type, include_extras: bool = False) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(schema, include_extras=include_extras)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        return {f.name: f.type for f in dataclasses.fields(schema)}


# what the ``trainer`` and ``checkpoint`` mappings are passed to: (module of pytorch_lightning, class)
LIGHTNING_KWARGS = {"trainer": ("trainer.trainer", "Trainer"),
                    "checkpoint": ("callbacks.model_checkpoint", "ModelCheckpoint")}


@functools.lru_cache(maxsize=None)
def lightning_parameters(which: str) -> Optional[Tuple[str, ...]]:
    """The parameter names (with ``self``) of ``Trainer.__init__`` (``which="trainer"``) or
    ``ModelCheckpoint.__init__`` (``"checkpoint"``), None if it takes ``**kwargs``.

    Read from the installed source with ``ast``: importing pytorch_lightning takes seconds, and validation runs before
    anything needs it. Falls back to importing it when the source cannot be read (or does not say)."""
    module, cls = LIGHTNING_KWARGS[which]
    try:
        spec = importlib.util.find_spec("pytorch_lightning")  # finds the package without running it
        locations = list(spec.submodule_search_locations or []) if spec else []
        path = os.path.join(locations[0], *module.split(".")) + ".py"
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        init = next(node for top in tree.body if isinstance(top, ast.ClassDef) and top.name == cls
                    for node in top.body if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    except (ImportError, IndexError, OSError, SyntaxError, StopIteration, ValueError):
        return _imported_parameters(module, cls)
    a = init.args
    if a.kwarg is not None:
        return None
    return tuple(p.arg for p in a.posonlyargs + a.args + ([a.vararg] if a.vararg else []) + a.kwonlyargs)


def _imported_parameters(module: str, cls: str) -> Optional[Tuple[str, ...]]:
    imported = getattr(importlib.import_module(f"pytorch_lightning.{module}"), cls)
    params = inspect.signature(imported.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    return tuple(params)


def validate_config(cfg: DictConfig, sources: Optional[Dict[str, str]] = None) -> List[ConfigIssue]:
    """All problems of an experiment config, without building anything."""
    v = _Validator(sources or {})
    v.check_leaves(cfg, "")
    v.check_dataclass(cfg, ExperimentConfig, "", "the experiment config")
    try:
        v.check_kwargs(cfg.get("trainer"), lightning_parameters("trainer"), "trainer", "pytorch_lightning.Trainer")
        _check_trainer_steps(v, cfg.get("trainer"))
        v.check_kwargs(cfg.get("checkpoint"), lightning_parameters("checkpoint"), "checkpoint",
                       "pytorch_lightning.callbacks.ModelCheckpoint")
    except ImportError:  # pragma: no cover
        pass
    monitor = (cfg.get("checkpoint") or {}).get("monitor")
    if isinstance(monitor, str) and monitor.startswith(("train/", "train_params/", "lr-")):
        v.add("checkpoint.monitor", f"{monitor!r} is a training scalar: those go to the loggers only (without a "
              "wait for the GPU), so the checkpoint callback would never see it",
              "monitor a validation metric (e.g. val/psnr), or leave checkpoint.monitor unset")
    prec = cfg.get("float32_matmul_precision", "high")
    if isinstance(prec, str) and prec not in MATMUL_PRECISIONS:
        v.add("float32_matmul_precision", f"unknown value {prec!r}",
              f"one of {', '.join(MATMUL_PRECISIONS)} (torch.set_float32_matmul_precision)")
    for top in ("data_type", "system_type"):
        if top in cfg and OmegaConf.is_missing(cfg, top):
            continue  # reported as a missing '???'
        if not cfg.get(top):
            v.add(top, f"not set: every recipe names its {top[:-5]} module",
                  "set it in the recipe or in a base file it extends")
    # de-duplicate (a slot reached twice reports once)
    seen = set()
    out = []
    for i in v.issues:
        k = (i.key, i.message)
        if k not in seen:
            seen.add(k)
            out.append(i)
    return out


def load_config(
    *yamls: str,
    cli_args: Sequence[str] = (),
    from_string: bool = False,
    validate: bool = True,
    timestamp: Optional[str] = None,
    return_raw: bool = False,
    **kwargs: Any,
) -> Any:
    """Load, merge, validate and resolve an experiment config.

    Args:
        yamls: recipe files (or YAML strings when ``from_string``), merged in order.
        cli_args: dotlist overrides, applied after the files.
        validate: run the start-up validation (raise :class:`ConfigError` listing every problem).
        timestamp: the trial timestamp (launch.py passes one shared by all ranks).
        return_raw: also return the merged, unresolved tree (self-contained: no ``extends``), as
            ``(cfg, raw)``; launch.py saves it as ``configs/raw.yaml``.
        kwargs: top-level values set last (e.g. ``n_gpus``).
    """
    merged = OmegaConf.create({})
    sources: Dict[str, str] = {}
    for y in yamls:
        if from_string:
            part = OmegaConf.create(y)
            for key in _leaf_paths(part):
                sources[key] = "<string>"
        else:
            part, src = load_yaml_tree(y)
            sources.update(src)
        _apply_replace_markers(merged, part)
        merged = OmegaConf.merge(merged, part)
    overrides, issues = _parse_overrides(cli_args)
    for key in _leaf_paths(overrides):
        sources[key] = CLI_SOURCE
    merged = OmegaConf.merge(merged, overrides)
    if kwargs:
        merged = OmegaConf.merge(merged, OmegaConf.create(kwargs))
    if validate:
        issues += validate_config(merged, sources)
        if issues:
            raise ConfigError(issues)
    raw = merged.copy()
    try:
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as e:
        raise ConfigError([ConfigIssue("<resolve>", _short(e))]) from e
    _coerce_ints(merged, ExperimentConfig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        cfg: DictConfig = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), merged)  # type: ignore[assignment]
    _derive_trial_paths(cfg, timestamp)
    return (cfg, raw) if return_raw else cfg


def set_top_level(cfg: DictConfig, raw: DictConfig, trial_paths: bool = True, **values: Any) -> None:
    """Set top-level values known only after :func:`load_config` returned (launch.py: ``n_gpus``, once the devices
    are set up) in the resolved config and in its raw tree, and update every value of ``cfg`` that interpolates
    them (directly or through other keys), as if they had been passed to :func:`load_config`. When ``tag``,
    ``name`` or ``exp_root_dir`` change, the trial folder is derived again (same timestamp), unless ``trial_paths``
    is False (a run whose folder is already fixed: a resume, a DDP rank joining rank 0's folder)."""
    before = OmegaConf.to_container(raw, resolve=True)
    for key, value in values.items():
        raw[key] = value
    after = OmegaConf.to_container(raw, resolve=True)
    changed = _changed(before, after, "")
    for path, value in changed:
        OmegaConf.update(cfg, path, value, merge=False)
    if trial_paths and any(path in ("tag", "name", "exp_root_dir") for path, _ in changed):
        _derive_trial_paths(cfg, cfg.timestamp or None)


def _changed(before: Any, after: Any, path: str) -> List[Tuple[str, Any]]:
    """(dotted key, new value) of what differs between two resolved trees; lists and leaves are replaced whole."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: List[Tuple[str, Any]] = []
        for k in after:
            sub = f"{path}.{k}" if path else str(k)
            out += _changed(before.get(k), after[k], sub) if k in before else [(sub, after[k])]
        return out
    return [] if before == after else [(path, after)]


def _derive_trial_paths(cfg: DictConfig, timestamp: Optional[str]) -> None:
    if cfg.use_timestamp:
        stamp = timestamp or cfg.timestamp or os.environ.get("THREESTUDIO_TRIAL_TIMESTAMP") or \
            datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg.timestamp = stamp
        cfg.trial_name = f"{cfg.tag}@{stamp}" if cfg.tag else stamp
    else:
        cfg.timestamp = ""
        cfg.trial_name = cfg.tag or "trial"
    cfg.exp_root_dir = os.path.abspath(os.path.expanduser(cfg.exp_root_dir))
    cfg.exp_dir = os.path.join(cfg.exp_root_dir, cfg.name)
    cfg.trial_dir = os.path.join(cfg.exp_dir, cfg.trial_name)


# --------------------------------------------------------------------------------------------------- modules
def config_owner(cls: type) -> Optional[str]:
    """The name messages give ``cls.Config``: the class whose body sets it when the Config is named after that class
    (``Config = DreamFusionConfig`` in ``DreamFusion``: "DreamFusion", as when the Config was nested in it), else
    None (:func:`parse_structured` then names the Config itself)."""
    conf = getattr(cls, "Config", None)
    owner = next((k for k in cls.__mro__ if vars(k).get("Config") is conf), None)
    if conf is not None and owner is not None and conf.__qualname__ == owner.__name__ + "Config":
        return owner.__name__
    return None


def parse_structured(fields: Any, cfg: Optional[Any] = None, owner: Optional[str] = None) -> Any:
    """Turn a dict/DictConfig into a typed config of dataclass ``fields`` (as in threestudio).

    Unknown keys and wrong types raise :class:`ConfigError` naming the key and the nearest valid one, and ``owner``
    (default: the name of ``fields``, without ``.Config``).
    """
    if cfg is None:
        cfg = {}
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = OmegaConf.structured(cfg)
    v = _Validator({})
    owner = owner or getattr(fields, "__qualname__", str(fields)).replace(".Config", "")
    if isinstance(cfg, DictConfig):
        v.check_dataclass(cfg, fields, "", owner)
    # module names inside a module config are checked by validate_config at start-up; here we only check shape
    issues = [i for i in v.issues if "mandatory" not in i.message and "required by" not in i.message]
    if issues:
        raise ConfigError(issues, header=f"Invalid config for {owner}")
    if isinstance(cfg, DictConfig):
        cfg = cfg.copy()
        _coerce_ints(cfg, fields)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scfg = OmegaConf.merge(OmegaConf.structured(fields), cfg)
    return scfg


def config_to_primitive(config: Any, resolve: bool = True) -> Any:
    return OmegaConf.to_container(config, resolve=resolve)


def dump_config(path: str, config: Any) -> None:
    """Write a config as YAML, atomically."""
    from threestudio.utils.saving import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(config))


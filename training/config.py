"""Training configuration: paper defaults, a YAML file on top, then ``key=value`` overrides.

The config is a nested dict with fixed sections (``model``, ``data``, ``loss``, ``optim``,
``train``, ``run``). Overrides use dotted keys (``loss.adv=0``, ``train.batch=4``) whose values
are parsed as YAML scalars/lists; unknown keys are errors, so a typo never trains silently with a
default.

``model.arch`` picks the network (``ttsr``, the default, or ``srntt``). Each architecture starts
from its own paper's objective and schedule (:data:`ARCH_DEFAULTS` on top of :data:`DEFAULTS`),
and settings that belong to the other architecture are refused by :func:`check_config`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from napari_refsr.archs.registry import ARCHITECTURES, model_keys
from napari_refsr.errors import RefSRError
from .data.references import ReferenceMix

__all__ = ["DEFAULTS", "ARCH_DEFAULTS", "ARCH_MODEL_KEYS", "load_config", "apply_overrides", "set_key",
           "rec_only", "check_config", "network_config"]


def _model_defaults() -> dict[str, Any]:
    """The ``model`` section: ``arch`` and every architecture's own fields with the defaults of its
    config dataclass (the published sizes: TTSR's ``TTSRConfig``, SRNTT's ``SRNTTConfig``), then
    ``init`` (fine-tune from a registry name or checkpoint path; null = from scratch) and
    ``vgg_weights`` (VGG19 ImageNet weights for the texture extractor's start / SRNTT's fixed
    extractor and the perceptual loss: a registry name, a torchvision .pth path, or null = random,
    tests only)."""
    first = next(iter(ARCHITECTURES.values())).defaults()
    model = {"arch": first["arch"], "n_feats": first["n_feats"]}
    for name, entry in ARCHITECTURES.items():
        defaults = entry.defaults()
        model.update({k: defaults[k] for k in model_keys(name)})
    return {**model, "init": None, "vgg_weights": "vgg19"}


# Paper / reference-code defaults (TTSR, CVPR 2020; researchmm/TTSR train.sh).
DEFAULTS: dict[str, dict[str, Any]] = {
    "model": _model_defaults(),
    "data": {
        "train": None,  # CUFED root (train/input, train/ref) or a plain folder of images
        "layout": "auto",  # auto | cufed | folder
        "ref_dir": None,  # plain folder: paired references (same file stem)
        "val": None,  # CUFED root / CUFED5 folder / plain folder; null = no validation
        "val_ref_dir": None,
        "val_level": 1,  # CUFED5 reference level 1..5 or "all"
        "val_crop": None,  # centre-crop validation HR images to this size (speed); null = whole
        "val_max_images": None,
        "crop": 160,  # HR / Ref training crop (LR = crop / 4)
        "min_ref": 32,  # smallest usable automatic reference (pixels)
        # plain folders without ref_dir: the mixture each crop's reference is drawn from
        # (training/data/references.py; ranges are [low, high])
        "reference": ReferenceMix().to_dict(),
        # validation reference of plain 2D images: similar (the second half of the image) or
        # overlap (a shifted, re-exposed view covering 3/4 of the held-out half)
        "val_reference": "similar",
        "blur": 0.0,  # Gaussian blur sigma (HR pixels) before ×4 downsampling; [a, b] = random
        "noise": 0.0,  # Gaussian noise std on LR (0..1 units); [a, b] = random
        "flip": True,
        "rot90": True,
        "workers": 2,
        "percentiles": [0.1, 99.9],  # intensity window of non-8-bit images
    },
    "loss": {
        "rec": 1.0,  # reconstruction (rec_type: l1 as the paper, or l2)
        "rec_type": "l1",
        "per": 1.0e-2,  # perceptual MSE on VGG19 relu5_1
        "tpl": 1.0e-2,  # transferal perceptual loss (TTSR only)
        "tex": 0.0,  # texture loss: Gram matrices against the swapped maps (SRNTT only)
        "adv": 1.0e-3,  # WGAN-GP
        "tpl_use_S": False,
        "tpl_type": "l2",
        # texture loss weighting by sigmoid(tex_S_scale · S + tex_S_bias) (the SRNTT authors' code)
        "tex_use_S": True,
        "tex_S_scale": -20.0,
        "tex_S_bias": 0.65,
        "gan_k": 2,  # discriminator steps per generator step
        "gp": 10.0,  # gradient-penalty weight
    },
    "optim": {
        "lr": 1.0e-4,
        "lr_lte": 1.0e-5,  # TTSR's LTE (SRNTT's VGG is frozen)
        "lr_dis": 1.0e-4,
        "betas": [0.9, 0.999],
        "betas_dis": [0.0, 0.9],
        "eps": 1.0e-8,
        "decay": 999999,  # StepLR step size in epochs (the reference's default: never)
        "gamma": 0.5,
    },
    "train": {
        "batch": 9,  # per process; effective batch = batch × processes
        "init_epochs": 2,  # reconstruction-only warm-up epochs
        "epochs": 50,  # epochs with every loss on, after the warm-up
        "max_steps": None,  # stop after this many optimisation steps (null = run all epochs)
        "amp": True,  # mixed precision on CUDA (ignored on CPU)
        "amp_dtype": "auto",  # auto (bf16 where supported, else fp16) | float16 | bfloat16
        "seed": 0,
        "device": "auto",
        "threads": None,  # torch CPU threads (null = PyTorch's default)
        "find_unused_parameters": False,
    },
    "run": {
        "out": "runs/ttsr",
        "log_every": 10,  # steps between CSV/TensorBoard rows (fewer for runs under 20 rows)
        "val_every": 1000,  # steps; 0 = only at the end
        "val_at_start": True,  # validate the initial model too (the "before" numbers)
        "ckpt_every": 1000,  # steps; a checkpoint is also written at every epoch end and at the end
        "keep_last": 3,
        "export": None,  # inference checkpoint written at the end (default: <out>/model.pt)
        "progress": True,
    },
}

# What each architecture changes in DEFAULTS before the YAML file and the overrides apply.
# SRNTT: the weights of the paper (rec 1, per 1e-4, tex 1e-4, adv 1e-6) and the schedule of the
# authors' code and the public port (5 reconstruction-only epochs, 100 epochs, learning rate ×0.1
# after half of them, Adam betas (0.9, 0.999) for the critic too, one critic step per step).
ARCH_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "ttsr": {},
    "srntt": {
        "loss": {"per": 1.0e-4, "tpl": 0.0, "tex": 1.0e-4, "adv": 1.0e-6, "gan_k": 1},
        "optim": {"betas_dis": [0.9, 0.999], "decay": 50, "gamma": 0.1},
        "train": {"init_epochs": 5, "epochs": 100},
        "run": {"out": "runs/srntt"},
    },
}

# model keys that only one architecture reads (the others, n_feats/init/vgg_weights, are shared)
ARCH_MODEL_KEYS: dict[str, tuple[str, ...]] = {name: model_keys(name) for name in ARCHITECTURES}

# the texture losses; each network names the one that applies to it (``texture_loss``)
TEXTURE_LOSSES = {"tpl": "the transferal perceptual loss",
                  "tex": "the Gram-matrix texture loss against swapped feature maps"}


def _merge(base: dict, extra: dict, where: str) -> None:
    for key, value in extra.items():
        if key not in base:
            known = ", ".join(sorted(base))
            raise RefSRError(f"unknown config key {where}{key!r}; known keys here: {known}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise RefSRError(f"config section {where}{key} must be a mapping, got {value!r}")
            _merge(base[key], value, f"{where}{key}.")
        else:
            base[key] = value


CONFIGS = Path(__file__).resolve().parent / "configs"  # the shipped configs (also in the wheel)


def _read_yaml(path: str | Path) -> dict:
    """A YAML config file; a bare name that is no file (``refsr-compact``) is a shipped config."""
    p = Path(path)
    shipped = CONFIGS / f"{p.name}.yaml"
    if not p.is_file() and p.suffix == "" and p.name == str(path) and shipped.is_file():
        p = shipped
    if not p.is_file():
        raise RefSRError(f"config file not found: {p} (shipped configs: "
                         f"{', '.join(sorted(c.stem for c in CONFIGS.glob('*.yaml')))})")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise RefSRError(f"config file {p} is not valid YAML: {err}") from err
    if not isinstance(loaded, dict):
        raise RefSRError(f"config file {p} must hold a mapping of sections, got {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), *, base: dict | None = None) -> dict:
    """The paper defaults of ``model.arch`` (:data:`DEFAULTS` + :data:`ARCH_DEFAULTS`), then
    ``base`` (a resumed run's config), the YAML file (if any) and ``key=value`` overrides."""
    loaded = _read_yaml(path) if path is not None else {}
    overrides = list(overrides)

    def build(arch_defaults: dict) -> dict:
        config = copy.deepcopy(DEFAULTS)
        _merge(config, copy.deepcopy(arch_defaults), "")
        if base is not None:
            _merge(config, copy.deepcopy(base), "")
        _merge(config, copy.deepcopy(loaded), "")
        apply_overrides(config, overrides)
        return config

    config = build({})  # first pass: which architecture the file / overrides / base ask for
    arch = config["model"]["arch"]
    overlay = ARCH_DEFAULTS.get(arch) if isinstance(arch, str) else None
    return build(overlay) if overlay else config


def set_key(config: dict, dotted: str, value: Any) -> None:
    """Set ``section.key`` (the section may be omitted when the key name is unique)."""
    parts = dotted.split(".")
    if len(parts) == 1:
        owners = [s for s, sec in config.items() if isinstance(sec, dict) and parts[0] in sec]
        if len(owners) != 1:
            raise RefSRError(f"unknown or ambiguous config key {dotted!r}; use section.key "
                             f"(sections: {', '.join(config)})")
        parts = [owners[0], parts[0]]
    node = config
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise RefSRError(f"unknown config key {dotted!r}")
        node = node[part]
    if parts[-1] not in node:
        raise RefSRError(f"unknown config key {dotted!r}; known in this section: {', '.join(sorted(node))}")
    node[parts[-1]] = value


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_overrides(config: dict, overrides: Iterable[str]) -> dict:
    """Apply ``key=value`` strings; values are YAML (``1e-4``, ``null``, ``[16,16,8,4]``, ``true``)."""
    for item in overrides:
        if "=" not in item:
            raise RefSRError(f"override {item!r} must look like key=value (e.g. loss.adv=0)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
            if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
                value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except yaml.YAMLError as err:
            raise RefSRError(f"override {item!r}: value is not valid YAML ({err})") from err
        set_key(config, key.strip(), value)
    return config


def rec_only(config: dict) -> dict:
    """The -rec variant: reconstruction loss only, no warm-up phase."""
    for key in ("per", "tpl", "tex", "adv"):
        config["loss"][key] = 0.0
    config["train"]["init_epochs"] = 0
    return config


def _plain(value: Any) -> Any:
    """Lists and tuples compare alike; numbers as floats."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def network_config(model: dict) -> dict:
    """The architecture config (``build_network``'s argument) of a training config's model section."""
    arch = model["arch"]
    if arch not in ARCH_MODEL_KEYS:
        raise RefSRError(f"model.arch must be one of {', '.join(ARCH_MODEL_KEYS)}, got {arch!r}")
    return {"arch": arch, "n_feats": model["n_feats"], **{k: model[k] for k in ARCH_MODEL_KEYS[arch]}}


def check_config(config: dict) -> dict:
    """Validate values that would otherwise fail deep inside training."""
    d, loss, tr, m = config["data"], config["loss"], config["train"], config["model"]
    arch = m["arch"]
    if arch not in ARCH_MODEL_KEYS:
        raise RefSRError(f"model.arch must be one of {', '.join(ARCH_MODEL_KEYS)}, got {arch!r}")
    for other, keys in ARCH_MODEL_KEYS.items():
        for key in keys if other != arch else ():
            if _plain(m[key]) != _plain(DEFAULTS["model"][key]):
                raise RefSRError(f"model.{key} is a {other} setting, but model.arch is {arch} "
                                 f"(its own: {', '.join('model.' + k for k in ARCH_MODEL_KEYS[arch])})")
    net_cls = ARCHITECTURES[arch].network_cls
    for key, what in TEXTURE_LOSSES.items():
        if key != net_cls.texture_loss and float(loss[key]) > 0:
            owners = "/".join(e.title for e in ARCHITECTURES.values() if e.network_cls.texture_loss == key)
            raise RefSRError(f"loss.{key} ({what}) is {owners}'s; model.arch is {arch}: set loss.{key}=0 "
                             f"({arch} has loss.{net_cls.texture_loss})")
    if not net_cls.trainable_extractor and _plain(config["optim"]["lr_lte"]) != DEFAULTS["optim"]["lr_lte"]:
        raise RefSRError(f"optim.lr_lte is the learning rate of a learnable texture extractor (TTSR's LTE); "
                         f"{arch}'s extractor is frozen (remove optim.lr_lte)")
    if not isinstance(loss["tex_use_S"], bool):
        raise RefSRError(f"loss.tex_use_S must be true or false, got {loss['tex_use_S']!r}")
    crop = d["crop"]
    if not isinstance(crop, int) or crop < 32 or crop % 4:
        raise RefSRError(f"data.crop must be an integer >= 32 and a multiple of 4, got {crop!r}")
    if float(loss["adv"]) > 0 and crop % 32:
        raise RefSRError(f"the discriminator needs data.crop to be a multiple of 32 (got {crop}); "
                         "use e.g. 160 or set loss.adv=0")
    if float(loss["rec"]) <= 0:
        raise RefSRError("loss.rec must be > 0: the reconstruction loss anchors every TTSR variant")
    if loss["rec_type"] not in ("l1", "l2"):
        raise RefSRError(f"loss.rec_type must be l1 or l2, got {loss['rec_type']!r}")
    if loss["tpl_type"] not in ("l1", "l2"):
        raise RefSRError(f"loss.tpl_type must be l1 or l2, got {loss['tpl_type']!r}")
    if int(tr["batch"]) < 1:
        raise RefSRError(f"train.batch must be >= 1, got {tr['batch']!r}")
    if tr["max_steps"] is not None and int(tr["max_steps"]) < 0:
        raise RefSRError(f"train.max_steps must be >= 0, got {tr['max_steps']!r}")
    if str(d["layout"]) not in ("auto", "cufed", "folder"):
        raise RefSRError(f"data.layout must be auto, cufed or folder, got {d['layout']!r}")
    if str(d["val_level"]) not in ("1", "2", "3", "4", "5", "all"):
        raise RefSRError(f"data.val_level must be 1..5 or all, got {d['val_level']!r}")
    ReferenceMix.from_config(d["reference"])  # raises on bad probabilities / ranges
    if d["val_reference"] not in ("similar", "overlap"):
        raise RefSRError(f"data.val_reference must be similar or overlap, got {d['val_reference']!r}")
    if tr["amp_dtype"] not in ("auto", "float16", "bfloat16"):
        raise RefSRError(f"train.amp_dtype must be auto, float16 or bfloat16, got {tr['amp_dtype']!r}")
    return config

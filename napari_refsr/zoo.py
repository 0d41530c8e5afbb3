"""bioimage.io model packages (spec 0.5): export a RefSR model, and read one back as weights.

A package holds an ``rdf.yaml`` and its files: the weights as ``pytorch_state_dict`` of
:class:`~napari_refsr.archs.two_input.TwoInputSR` with its architecture source
(:mod:`.zoo_source`, one self-contained file) and as ``torchscript``
(:mod:`napari_refsr.archs.scripted`: for consumers without Python), test tensors, covers and a
model card.

* Two inputs — ``lr`` and ``reference`` (batch, channel, y, x), parameterised sizes — each
  normalised the way napari-refsr does for non-8-bit images: percentiles 0.1 / 99.9 of the
  sample to [0, 1] (``scale_range`` over channel, y, x) then clipped. The output ``sr`` is tied to
  ``lr`` ×4 on y and x (``SizeReference`` with scale 1/4) with a halo for tiling, in [0, 1]
  (multiply back through the LR's intensity window to get its units, as napari-refsr does).
* The test output is napari-refsr's own pipeline result on the test input, so a consumer that
  reproduces it (``bioimageio.core``'s test) computes what napari-refsr computes.
* :func:`export_bioimageio` needs the ``bioimageio`` extra (``bioimageio.spec``);
  :func:`read_package` does not (zip + YAML + ``torch.load(weights_only=True)``), so
  :func:`napari_refsr.load_model` opens packages with the core's dependencies alone.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import yaml

from .errors import RefSRError, WeightsError

__all__ = ["export_bioimageio", "read_package", "is_package", "HALO", "CITATIONS"]

# LR pixels of context a tile needs (48 output pixels cropped per side): one changed LR pixel moves
# refsr-compact's output by 5e-4 at 8 LR pixels' distance and by < 3e-6 from 12 on
HALO = 12
LR_SIZE = (32, 16)  # ParameterizedSize(min, step) of the LR's y and x (4·32 − 2·48 > 0 output pixels)
REF_SIZE = (32, 16)  # of the reference's y and x (multiples of 4, as the network needs)
PERCENTILES = (0.1, 99.9)  # napari_refsr.normalize.DEFAULT_PERCENTILES
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
WEIGHTS_PREFIX = "network."  # TwoInputSR keeps the network under .network
CITATIONS = {
    "ttsr": ("Yang, F., Yang, H., Fu, J., Lu, H., Guo, B. Learning Texture Transformer Network for Image "
             "Super-Resolution. CVPR 2020.", "https://arxiv.org/abs/2006.04139"),
    "srntt": ("Zhang, Z., Wang, Z., Lin, Z., Qi, H. Image Super-Resolution by Neural Texture Transfer. "
              "CVPR 2019.", "https://arxiv.org/abs/1903.00834"),
}


# ----------------------------------------------------------------------------------- reading


def _rdf_name(names: Sequence[str]) -> str | None:
    return next((n for n in RDF_NAMES if n in names), None)


def is_package(path: str | Path) -> bool:
    """True for a bioimage.io package: a zip holding ``rdf.yaml`` (or ``bioimageio.yaml``), or
    that YAML file of an unpacked package."""
    path = Path(path)
    if path.name in RDF_NAMES:
        return path.is_file()
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return _rdf_name(zf.namelist()) is not None
    except (OSError, zipfile.BadZipFile):
        return False


def read_package(path: str | Path):
    """The napari-refsr weights of a bioimage.io package (zip or unpacked ``rdf.yaml``) as a
    :class:`~napari_refsr.weights.Checkpoint`; the package must have been exported by napari-refsr
    (its architecture is rebuilt from ``architecture.kwargs``)."""
    from .weights.checkpoint import _from_export
    from .zoo_source import ENTRY_POINT

    path = Path(path)
    try:
        if path.name in RDF_NAMES:
            folder = path.parent
            rdf = yaml.safe_load(path.read_text(encoding="utf-8"))
            read = lambda name: (folder / name).read_bytes()  # noqa: E731
            rdf, state_bytes = _read_rdf(rdf, read)
        else:
            with zipfile.ZipFile(path) as zf:
                name = _rdf_name(zf.namelist())
                rdf, state_bytes = _read_rdf(yaml.safe_load(zf.read(name)), zf.read)
    except (OSError, KeyError, zipfile.BadZipFile, yaml.YAMLError) as exc:
        raise WeightsError(f"{path}: not a readable bioimage.io package ({type(exc).__name__}: {exc})") from None
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    if arch.get("callable") != ENTRY_POINT or not isinstance((arch.get("kwargs") or {}).get("config"), dict):
        raise WeightsError(f"{path}: a bioimage.io package not exported by napari-refsr (its architecture "
                           f"{arch.get('callable')!r} is not one napari-refsr can rebuild)")
    try:
        state = torch.load(io.BytesIO(state_bytes), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - one clear message
        raise WeightsError(f"{path}: the package's weights cannot be read ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and k.startswith(WEIGHTS_PREFIX) for k in state):
        raise WeightsError(f"{path}: the package's weights are not a napari-refsr TwoInputSR state dict")
    state = {k[len(WEIGHTS_PREFIX):]: v for k, v in state.items()}
    extra = (rdf.get("config") or {}).get("napari_refsr") or {}
    meta = dict(extra.get("meta") or {}, bioimageio_name=rdf.get("name"))
    try:
        ckpt = _from_export(state, arch["kwargs"]["config"], meta)
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from None
    ckpt.source_format = "bioimageio"
    ckpt.path = path
    return ckpt


def _read_rdf(rdf, read) -> tuple[dict, bytes]:
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise WeightsError("the package does not describe a model")
    entry = (rdf.get("weights") or {}).get("pytorch_state_dict")
    if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
        raise WeightsError("the package has no pytorch_state_dict weights, which napari-refsr needs")
    return rdf, read(entry["source"])


# ----------------------------------------------------------------------------------- writing


def _valid_size(n: int, size: tuple[int, int], most: int) -> int:
    """The largest ``min + k*step`` that is <= min(n, most); RefSRError when n < min."""
    low, step = size
    if n < low:
        raise RefSRError(f"test image side {n} is smaller than the package's minimum {low}")
    return low + (min(n, most) - low) // step * step


def default_test_images(channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(LR, reference, ground truth) float32 in [0, 1] from scikit-image's bundled images (no
    download): the motorcycle stereo pair for RGB, the cell image for grayscale. The LR is the
    ground truth ↓4 with PIL-exact bicubic; the reference covers the same area in the other view
    (RGB) or the field above it (grayscale)."""
    from skimage import data

    from .resize import resize_uint8

    if channels == 3:
        left, right, _ = data.stereo_motorcycle()
        hr, ref = left[96:352, 160:416], right[64:384, 128:448]
    else:
        cell = data.cell()
        hr, ref = cell[300:556, 200:456], cell[0:256, 200:456]
    lr = resize_uint8(np.ascontiguousarray(hr), (hr.shape[0] // 4, hr.shape[1] // 4))
    return tuple(np.ascontiguousarray(a, dtype=np.float32) / 255.0 for a in (lr, ref, hr))


def _to_bioimageio(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) → (1, C, H, W) float32."""
    arr = image[..., None] if image.ndim == 2 else image
    return np.ascontiguousarray(np.moveaxis(arr, -1, 0)[None], dtype=np.float32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _cover(lr: np.ndarray, sr: np.ndarray, ref: np.ndarray, path: Path) -> None:
    """A 2:1 PNG: the LR (nearest ×4) | the result, each with the reference inset small."""
    from PIL import Image

    def rgb8(a):
        a = np.clip(a, 0, 1)
        a = np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a
        return (a * 255 + 0.5).astype(np.uint8)

    side = sr.shape[0]
    left = Image.fromarray(rgb8(lr)).resize((sr.shape[1], side), Image.NEAREST)
    canvas = Image.new("RGB", (2 * sr.shape[1], side))
    canvas.paste(left, (0, 0))
    canvas.paste(Image.fromarray(rgb8(sr)), (sr.shape[1], 0))
    inset = Image.fromarray(rgb8(ref))
    inset.thumbnail((side // 3, side // 3))
    canvas.paste(inset, (sr.shape[1] - inset.width, side - inset.height))
    canvas.resize((512, 256)).save(path)


def _card(name: str, model, channels: int, psnr: tuple[float, float] | None, torchscript: bool) -> str:
    arch = model.config.get("arch", "ttsr")
    meta = model.meta or {}
    lines = [f"# {name}", "",
             f"Reference-based ×4 super-resolution ({arch.upper()}), exported by napari-refsr from "
             f"`{model.name}`.", "",
             "## Inputs and output", "",
             f"- `lr`: the low-resolution image, (batch, channel, y, x), {channels} channel(s).",
             "- `reference`: a high-resolution image whose textures are transferred (same channels, "
             "any size the axes allow; ideally showing similar structures at the target resolution).",
             "- `sr`: ×4 on y and x, in [0, 1]: the LR's intensity window (percentiles 0.1 / 99.9) "
             "maps to 0 and 1; multiply back through it for the LR's units.",
             f"- A halo of {HALO} LR pixels ({HALO * 4} output pixels) per side is cropped when tiling. "
             "Tile only the LR: every tile must see the whole reference (napari-refsr's own pipeline "
             "does this; a generic tiler that also splits the reference gives weaker textures).", "",
             "## Weights", "",
             "`pytorch_state_dict` with its architecture source (one file generated from napari-refsr's "
             "modules; needs only torch and numpy), for bioimageio.core and the Python tools built on it."
             + (" `torchscript` as well (any input sizes the axes allow: the convolutional parts are "
                "traced, the size-dependent bicubic resizing and texture search scripted), for consumers "
                "that run TorchScript without Python (deepImageJ, Icy and other tools on the Java/C++ "
                "runtimes), computing the same output." if torchscript else ""), "",
             "## Validation", ""]
    if psnr is not None:
        lines.append(f"On the packaged test image (its ground truth ↓4 as input): PSNR {psnr[1]:.2f} dB "
                     f"against {psnr[0]:.2f} dB for bicubic upscaling (RGB/gray, [0, 1]).")
    lines.append("The test output is napari-refsr's own result on the test input; `bioimageio test` "
                 "reproduces it. To validate on your data, compare against bicubic on held-out images "
                 "of your modality (`training/evaluate.py` in napari-refsr).")
    if meta:
        lines += ["", "## Training", "", "```", yaml.safe_dump(meta, sort_keys=True).strip()[:4000], "```"]
    lines += ["", "## Citations", ""] + [f"- {text} {url}" for text, url in
                                         (CITATIONS[arch], CITATIONS["srntt"] if arch == "ttsr" else CITATIONS["ttsr"])]
    return "\n".join(lines) + "\n"


def _licence(model, licence: str | None) -> str:
    if licence:
        return licence
    from . import weights

    spec = weights.REGISTRY.get(model.name)
    return spec.licence.split()[0] if spec is not None else "MIT"


def _packaged_config(model) -> dict:
    """The architecture a package holds. Its two-input wrapper (and the TorchScript) searches each
    reference once, as published TTSR does (no phase copies, :mod:`napari_refsr.phases`), so the
    config says so and ``load_model(PACKAGE.zip)`` reproduces the package's test outputs."""
    return {**model.config, "search_phases": 1} if "search_phases" in model.config else dict(model.config)


def export_bioimageio(
    source,
    output: str | Path,
    *,
    channels: int = 3,
    name: str | None = None,
    authors: Sequence[str] = ("napari-refsr developers",),
    licence: str | None = None,
    test_images: tuple[np.ndarray, np.ndarray] | None = None,
    torchscript: bool = True,
) -> Path:
    """Write a bioimage.io model package (zip) of ``source`` (a model name, checkpoint path or
    :class:`~napari_refsr.RefSRModel`) to ``output``, atomically; returns its path.

    ``channels``: 1 (grayscale) or 3 (RGB) per input. ``test_images``: (LR, reference) arrays
    for the test tensors and covers (cropped to valid sizes); default scikit-image's images.
    ``licence``: an SPDX id (default: the registry entry's, else MIT). ``torchscript``: add
    TorchScript weights next to the state dict (checked to reproduce the test output)."""
    try:
        from bioimageio.spec import save_bioimageio_package
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise RefSRError("bioimage.io export needs bioimageio.spec: pip install 'napari-refsr[bioimageio]'") from None
    from pydantic import ValidationError

    from .archs.two_input import TwoInputSR
    from .archs.registry import architecture
    from .model import RefSRModel, load_model
    from .normalize import check_image, intensity_window
    from .pipeline import upscale_detailed
    from .resize import resize_bicubic
    from .zoo_source import ENTRY_POINT, architecture_source

    if channels not in (1, 3):
        raise RefSRError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    output = Path(output)
    if output.suffix.lower() != ".zip":
        raise RefSRError(f"{output}: a bioimage.io package is a .zip file")
    model = source if isinstance(source, RefSRModel) else load_model(source, device="cpu")
    arch = model.config.get("arch", "ttsr")
    config_cls, net_cls = architecture(arch).config_cls, architecture(arch).network_cls
    packaged = _packaged_config(model)
    name = name or re.sub(r"[^A-Za-z0-9_+\- ()]", "-", f"napari-refsr {Path(model.name).stem}")

    hr = None
    if test_images is None:
        lr, ref, hr = default_test_images(channels)
    else:
        lr, ref = (check_image(a, what) for a, what in zip(test_images, ("test image", "test reference")))
        lr, ref = (np.asarray(a, dtype=np.float32) for a in (lr, ref))
    for what, a in (("test image", lr), ("test reference", ref)):
        if (a.ndim == 3 and a.shape[2] == 3) != (channels == 3) or (a.ndim == 3 and a.shape[2] not in (1, 3)):
            raise RefSRError(f"{what} of shape {a.shape} does not have {channels} channel(s)")
    lr = lr[: _valid_size(lr.shape[0], LR_SIZE, 96), : _valid_size(lr.shape[1], LR_SIZE, 96)]
    ref = ref[: _valid_size(ref.shape[0], REF_SIZE, 256), : _valid_size(ref.shape[1], REF_SIZE, 256)]
    if hr is not None:
        hr = hr[: lr.shape[0] * 4, : lr.shape[1] * 4]

    # the expected output: napari-refsr's pipeline (one tile), in the LR's [0, 1] window
    cpu_model = model.to("cpu", half=False)
    result = upscale_detailed(cpu_model, lr, ref, device="cpu", tile=max(lr.shape[:2]), phases=1)
    lo, hi = intensity_window(lr, PERCENTILES)
    sr = ((result.image.astype(np.float32) - lo) / (hi - lo)).astype(np.float32)
    psnr = None
    if hr is not None:
        bicubic = resize_bicubic(torch.from_numpy(np.moveaxis(np.atleast_3d(lr), -1, 0).copy()),
                                 (lr.shape[0] * 4, lr.shape[1] * 4)).clamp(0, 1).numpy()
        bicubic = np.moveaxis(bicubic, 0, -1).reshape(sr.shape)
        psnr = (_psnr(bicubic, hr), _psnr(np.clip(sr, 0, 1), hr))

    wrapper = TwoInputSR(net_cls(config_cls(**packaged)), channels)
    wrapper.network.load_state_dict(cpu_model.network.state_dict())

    with tempfile.TemporaryDirectory(prefix="refsr-bioimageio-") as tmp:
        d = Path(tmp)
        import tifffile

        for stem, arr in (("lr", lr), ("reference", ref), ("sr", sr)):
            np.save(d / f"test_{stem}.npy", _to_bioimageio(arr))
            tifffile.imwrite(d / f"sample_{stem}.tif", _to_bioimageio(arr), photometric="minisblack")
        (d / "refsr_architecture.py").write_text(architecture_source(net_cls, config_cls), encoding="utf-8")
        torch.save({k: v.detach().cpu().contiguous() for k, v in wrapper.state_dict().items()}, d / "weights.pt")
        _cover(lr, np.clip(sr, 0, 1), ref, d / "cover.png")
        if torchscript:
            _write_torchscript(wrapper, channels, (lr, ref), d / "weights_torchscript.pt")
        (d / "README.md").write_text(_card(name, model, channels, psnr, torchscript), encoding="utf-8")
        descr = _describe(v0_5, d, model, name, channels, authors, _licence(model, licence), ENTRY_POINT,
                          torchscript)
        if isinstance(descr, ValidationError):
            raise RefSRError(f"the bioimage.io description is not valid: {_first_error(descr)}")
        tmp_zip = d / "package.zip"
        save_bioimageio_package(descr, output_path=tmp_zip)
        output.parent.mkdir(parents=True, exist_ok=True)
        part = output.with_name(f".{output.name}.part")
        shutil.copyfile(tmp_zip, part)
        part.replace(output)
    return output


def _first_error(err) -> str:
    first = err.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def _write_torchscript(wrapper, channels: int, test: tuple[np.ndarray, np.ndarray], path: Path) -> None:
    """TorchScript of ``wrapper``'s network, saved to ``path`` once it reproduces the state-dict
    wrapper's output on the test images."""
    from .archs.scripted import script_two_input

    scripted = script_two_input(wrapper.network, channels)
    lr, ref = (torch.from_numpy(_to_bioimageio(a)) for a in test)
    with torch.no_grad():
        expected, got = wrapper(lr, ref), scripted(lr, ref)
    # the scripted search is the dense formulation, the network's the shift-sum one: equal up to
    # float rounding, which on near-tied patches can pick another, equally good one (measured:
    # 3.8e-5 on 0.2 % of a flat grayscale test image); bioimage.io's own test allows 1e-3
    if got.shape != expected.shape or float((got - expected).abs().max()) > 1e-4:
        raise RefSRError("the TorchScript module does not reproduce the network's output; export with "
                         "torchscript=False")
    with warnings.catch_warnings():  # deprecated in torch >= 2.9; what Java/C++ consumers read
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.save` is deprecated")
        torch.jit.save(scripted, str(path))


def _describe(v0_5, d: Path, model, name: str, channels: int, authors, licence: str, entry_point: str,
              torchscript: bool):
    """The ModelDescr of the files in ``d`` (or the pydantic ValidationError)."""
    from pydantic import ValidationError

    import bioimageio.spec

    names = ["r", "g", "b"] if channels == 3 else ["gray"]
    space = ("y", "x")

    def in_axes(size):
        return [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=names)] + [
            v0_5.SpaceInputAxis(id=v0_5.AxisId(a), size=v0_5.ParameterizedSize(min=size[0], step=size[1]))
            for a in space]

    def normalise():
        return [v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
                    axes=[v0_5.AxisId("channel"), v0_5.AxisId("y"), v0_5.AxisId("x")],
                    min_percentile=PERCENTILES[0], max_percentile=PERCENTILES[1])),
                v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=0.0, max=1.0))]

    arch = model.config.get("arch", "ttsr")
    try:
        inputs = [
            v0_5.InputTensorDescr(id=v0_5.TensorId("lr"), description="low-resolution image",
                                  axes=in_axes(LR_SIZE), test_tensor=v0_5.FileDescr(source=d / "test_lr.npy"),
                                  sample_tensor=v0_5.FileDescr(source=d / "sample_lr.tif"),
                                  data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                                  preprocessing=normalise()),
            v0_5.InputTensorDescr(id=v0_5.TensorId("reference"), description="high-resolution reference image",
                                  axes=in_axes(REF_SIZE),
                                  test_tensor=v0_5.FileDescr(source=d / "test_reference.npy"),
                                  sample_tensor=v0_5.FileDescr(source=d / "sample_reference.tif"),
                                  data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                                  preprocessing=normalise()),
        ]
        out_axes = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=names)] + [
            v0_5.SpaceOutputAxisWithHalo(id=v0_5.AxisId(a), scale=0.25, halo=HALO * 4,
                                         size=v0_5.SizeReference(tensor_id=v0_5.TensorId("lr"),
                                                                 axis_id=v0_5.AxisId(a)))
            for a in space]
        outputs = [v0_5.OutputTensorDescr(id=v0_5.TensorId("sr"), description="×4 super-resolved image in [0, 1]",
                                          axes=out_axes, test_tensor=v0_5.FileDescr(source=d / "test_sr.npy"),
                                          sample_tensor=v0_5.FileDescr(source=d / "sample_sr.tif"),
                                          data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))]
        torch_version = v0_5.Version(torch.__version__.split("+")[0])
        weights = v0_5.WeightsDescr(
            pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
                source=d / "weights.pt",
                architecture=v0_5.ArchitectureFromFileDescr(
                    source=d / "refsr_architecture.py", callable=entry_point,
                    kwargs={"config": _packaged_config(model), "channels": channels}),
                pytorch_version=torch_version),
            torchscript=v0_5.TorchscriptWeightsDescr(source=d / "weights_torchscript.pt", parent="pytorch_state_dict",
                                                     pytorch_version=torch_version) if torchscript else None)
        cites = [CITATIONS[arch]] + ([CITATIONS["srntt"]] if arch == "ttsr" else [])
        return v0_5.ModelDescr(
            name=name,
            description=f"Reference-based ×4 super-resolution ({arch.upper()}): textures of a high-resolution "
                        "reference image are transferred into the upscaled low-resolution image.",
            authors=[v0_5.Author(name=a) for a in authors],
            cite=[v0_5.CiteEntry(text=text, url=url) for text, url in cites],
            license=licence,
            documentation=v0_5.FileDescr(source=d / "README.md"),
            covers=[v0_5.FileDescr(source=d / "cover.png")],
            tags=["super-resolution", "reference-based", arch, "2d", "pytorch", "napari-refsr"],
            inputs=inputs, outputs=outputs, weights=weights,
            config=v0_5.Config(napari_refsr={"config": _packaged_config(model), "meta": dict(model.meta or {}),
                                             "source": model.name, "channels": channels,
                                             "exported_with": f"bioimageio.spec {bioimageio.spec.__version__}"}),
        )
    except ValidationError as err:
        return err

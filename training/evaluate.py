"""PSNR / SSIM of TTSR and SRNTT models next to bicubic, on CUFED5 or any folder of images.

Protocol of the TTSR paper and code: HR cropped to a multiple of 4, LR by PIL-exact bicubic ×1/4,
the whole image through the network (no tiling), SR rounded to 8 bits for 8-bit data, metrics on
the Y channel (BT.601, 0..255 scale) for RGB and on the single channel for grayscale, no border
crop, SSIM with an 11×11 Gaussian window (σ 1.5) — both from ``skimage.metrics``.

    python training/evaluate.py --model ttsr-rec --data CUFED/test/CUFED5 --level 1 2 3 4 5 all \\
        --csv results.csv

``--model`` takes registry names, inference checkpoints (anything ``napari_refsr.load_model``
reads, of either architecture: the file's config says which) and training checkpoints; it can be
given several times.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script from a source checkout: be training.<module> (PEP 366)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import training  # noqa: E402, F401

    __package__ = "training"

from napari_refsr.errors import RefSRError  # noqa: E402
from napari_refsr.normalize import from_net, to_net  # noqa: E402
from napari_refsr.phases import PHASES, phase_views, resolve_phases  # noqa: E402
from .data import EvalItem, eval_items  # noqa: E402

__all__ = ["metric_image", "psnr_ssim", "evaluate_network", "load_network", "main"]

_Y = np.array([65.738, 129.057, 25.064]) / 256.0  # BT.601 as MATLAB rgb2ycbcr (the reference code)


def metric_image(x: torch.Tensor, *, quantize: bool, gray: bool) -> np.ndarray:
    """(3, H, W) image in [-1, 1] → (H, W) float64 on the 0..255 scale: Y for RGB, the mean
    channel for grayscale; rounded to 8 bits first when the data are 8-bit."""
    v = from_net(x.detach().float().cpu().numpy().astype(np.float64))
    if quantize:
        v = np.clip(np.round(v), 0, 255)
    if gray:
        return v.mean(axis=0)
    return 16.0 + np.tensordot(_Y, v, axes=(0, 0))


def psnr_ssim(test: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM (Gaussian 11×11, σ 1.5, data range 255) of two (H, W) images."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # scipy.stats: slow import

    if test.shape != truth.shape:
        raise RefSRError(f"cannot compare images of shapes {test.shape} and {truth.shape}")
    mse = float(np.mean((test - truth) ** 2))
    psnr = math.inf if mse == 0 else float(peak_signal_noise_ratio(truth, test, data_range=255.0))
    ssim = float(structural_similarity(truth, test, data_range=255.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))
    return psnr, ssim


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None or device.type != "cuda":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type="cuda", dtype=amp_dtype)


@torch.no_grad()
def evaluate_network(network: torch.nn.Module | None, items: Sequence[EvalItem], *, device="cpu",
                     amp_dtype: torch.dtype | None = None, uninformative_ref: bool = False,
                     phases: int | None = None) -> dict:
    """Mean PSNR/SSIM of ``network`` (None: bicubic only) and of bicubic on ``items``.

    ``uninformative_ref``: give the network its own LR↑ as the only reference instead of the real
    ones, which measures how much of its quality comes from the reference. ``phases``: reference
    copies per axis searched (:mod:`napari_refsr.phases`; None = the network's own setting), as
    inference does.

    Returns ``{"psnr", "ssim", "psnr_bicubic", "ssim_bicubic", "n", "images": [...]}``, plus
    ``s_in`` / ``s_out``, the mean confidence S where the reference holds the image's content and
    where it does not, when the items say where that is (:attr:`EvalItem.covered`).
    """
    device = torch.device(device)
    was_training = network.training if network is not None else False
    if network is not None:
        network.eval()
    rows = []
    try:
        for item in items:
            n_phases = 1 if network is None else resolve_phases(phases, network, [r.shape[-2:] for r in item.refs])
            x = item.inputs(n_phases)
            hr = metric_image(x["hr"][0], quantize=item.quantize, gray=item.gray)
            bic = metric_image(x["lr_up"][0], quantize=item.quantize, gray=item.gray)
            row = {"image": item.name}
            row["psnr_bicubic"], row["ssim_bicubic"] = psnr_ssim(bic, hr)
            if network is not None:
                with _autocast(device, amp_dtype):
                    out = _forward(network, x, item, device, uninformative_ref, n_phases)
                sr = metric_image(out[0][0].float().clamp(-1, 1), quantize=item.quantize, gray=item.gray)
                row["psnr"], row["ssim"] = psnr_ssim(sr, hr)
                if item.covered is not None and getattr(out, "S", None) is not None:
                    row["s_in"], row["s_out"] = confidence_inside_outside(out.S[0, 0].float().cpu(), item.covered)
            rows.append(row)
    finally:
        if network is not None and was_training:
            network.train()
    if not rows:
        raise RefSRError("no evaluation images")
    result = {"n": len(rows), "images": rows}
    for key in rows[0]:
        if key != "image":
            values = [r[key] for r in rows if key in r and math.isfinite(r[key])]
            result[key] = float(np.mean(values)) if values else math.nan
    return result


def _forward(network: torch.nn.Module, x: dict, item: EvalItem, device, uninformative: bool, phases: int):
    """The network on ``item.inputs(phases)`` = ``x``, with its references or (``uninformative``)
    with its own LR↑ as the only reference, searched at the same phases as real ones are."""
    refs, refs_du = x["ref"], x["ref_down_up"]
    if uninformative:
        refs = [view for view, _ in phase_views(x["lr_up"], phases)]
        refs_du = [_down_up_net(r, item.quantize) for r in refs]
    return network(x["lr"].to(device), x["lr_up"].to(device), [r.to(device) for r in refs],
                   [r.to(device) for r in refs_du])


def confidence_inside_outside(S: torch.Tensor, covered: torch.Tensor) -> tuple[float, float]:
    """Mean S (LR grid) over the LR pixels whose whole 4×4 HR block the reference shows, and
    over the others (NaN where there are none)."""
    h, w = S.shape
    inside = covered[: h * 4, : w * 4].reshape(h, 4, w, 4).all(dim=3).all(dim=1)
    mean = lambda m: float(S[m].mean()) if bool(m.any()) else math.nan  # noqa: E731
    return mean(inside), mean(~inside)


def _down_up_net(img: torch.Tensor, quantize: bool) -> torch.Tensor:
    """Ref↓↑ of an image in [-1, 1], on the 8-bit grid when the data are 8-bit (as the pipeline)."""
    from napari_refsr.resize import down_up

    return to_net(down_up(from_net(img), 4, quantize=quantize))


def load_network(source: str, device: torch.device) -> tuple[torch.nn.Module, str]:
    """A network from a registry name, an inference checkpoint or a training checkpoint."""
    from .checkpoints import load_training_checkpoint, network_from_checkpoint

    path = Path(source).expanduser()
    if path.is_file():
        try:
            ckpt = load_training_checkpoint(path)
        except RefSRError:  # not a training checkpoint: an inference file, read below
            ckpt = None
        if ckpt is not None:
            return network_from_checkpoint(ckpt).to(device).eval(), f"{path.name} (step {ckpt['step']})"
    from napari_refsr import load_model

    model = load_model(source, device=device, cache=False)
    return model.network, model.name


def _levels(values: Sequence[str]) -> list[str]:
    out = []
    for v in values:
        v = str(v).lower()
        if v not in ("1", "2", "3", "4", "5", "all"):
            raise RefSRError(f"--level takes 1..5 or all, got {v!r}")
        out.append(v)
    return out


REFERENCES = ("similar", "overlap", "registered", "unrelated", "uninformative")
_LR_UP = "LR↑"


def run(models: Sequence[str], data: str, *, levels: Sequence[str] = ("1",), ref_dir: str | None = None,
        crop: int | None = None, max_images: int | None = None, device: str = "auto",
        csv_path: str | None = None, out=None, uninformative_ref: bool = False,
        references: Sequence[str] = ("similar",), phases: int | None = None) -> list[dict]:
    """Evaluate every model (and bicubic) at every level and with every kind of reference
    (``similar``, ``overlap``, ``registered``, ``unrelated``: see :func:`training.data.eval_items`;
    ``uninformative``: the image's own LR↑); print a table, write a CSV. ``uninformative_ref``
    adds ``uninformative`` to ``references``."""
    out = out or sys.stdout
    from napari_refsr.devices import choose_device

    references = list(dict.fromkeys(list(references) + (["uninformative"] if uninformative_ref else [])))
    bad = [r for r in references if r not in REFERENCES]
    if bad or not references:
        raise RefSRError(f"--refs takes {', '.join(REFERENCES)}, got {', '.join(bad) or 'nothing'}")
    dev = choose_device(device)
    networks = [load_network(m, dev) for m in models]
    summary, per_image = [], []

    def record(method: str, tag: str, kind: str, res: dict, *, bicubic: bool = False, seconds="") -> None:
        """One summary row (and its per-image rows) from :func:`evaluate_network`'s result."""
        tail = "_bicubic" if bicubic else ""

        def row(r: dict) -> dict:
            return {"method": method, "level": tag, "reference": kind, "psnr": r["psnr" + tail],
                    "ssim": r["ssim" + tail], "s_in": math.nan if bicubic else r.get("s_in", math.nan),
                    "s_out": math.nan if bicubic else r.get("s_out", math.nan)}

        summary.append({**row(res), "n": res["n"], "seconds": seconds})
        per_image.extend({**row(r), "image": r["image"]} for r in res["images"])

    cufed = ref_dir is None and _is_cufed(data)
    for level in levels:
        tag = level if cufed else "-"
        bicubic_done = False
        for kind in references:
            items = eval_items(data, level=level, ref_dir=ref_dir, crop=crop, max_images=max_images,
                               reference="similar" if kind == "uninformative" else kind)
            for net, name in networks or [(None, None)]:
                t0 = time.perf_counter()
                res = evaluate_network(net, items, device=dev, uninformative_ref=kind == "uninformative",
                                       phases=phases)
                seconds = round(time.perf_counter() - t0, 2)
                if not bicubic_done:  # the HR images, and so bicubic, are the same for every kind
                    record("bicubic", tag, "-", res, bicubic=True)
                    bicubic_done = True
                if net is None:
                    continue
                method = f"{name} (ref = {_LR_UP})" if kind == "uninformative" else name
                record(method, tag, _LR_UP if kind == "uninformative" else kind, res, seconds=seconds)
            if net is None:
                break
        if not cufed:
            break  # levels only mean something for CUFED5
    _print_table(summary, out)
    if csv_path:
        _write_csv(Path(csv_path), summary, per_image)
        print(f"wrote {csv_path}", file=out)
    return summary


def reference_figure(network: torch.nn.Module, item: EvalItem, path: str | Path, *, device="cpu",
                     box: tuple[int, int, int, int] | None = None, zoom: int = 2, phases: int | None = None) -> Path:
    """What the reference adds, on one image: LR↑ (bicubic) / the output with the item's reference /
    with the uninformative one (LR↑) / the confidence S with the real reference (black 0.5, white
    1) / HR, over ``box`` (y, x, h, w in HR pixels; default: the whole image)."""
    from .plot import plot_panels

    phases = resolve_phases(phases, network, [r.shape[-2:] for r in item.refs])
    x = item.inputs(phases)
    with torch.no_grad():
        network.eval()
        real = _forward(network, x, item, device, False, phases)
        own = _forward(network, x, item, device, True, phases)
    y0, x0, h, w = box or (0, 0, *item.hr.shape[-2:])

    def pixels(t: torch.Tensor) -> np.ndarray:
        v = ((t[0].float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        return v[y0 : y0 + h, x0 : x0 + w]

    s = torch.nn.functional.interpolate(real.S.float().cpu(), scale_factor=4, mode="nearest")[0, 0]
    conf = ((s.clamp(0.5, 1) - 0.5) * 510).round().byte().numpy()[y0 : y0 + h, x0 : x0 + w]
    panels = [("LR (bicubic)", pixels(x["lr_up"])), ("with the reference", pixels(real[0])),
              ("with ref = LR (uninformative)", pixels(own[0])), ("confidence S (0.5..1)", conf),
              ("HR (truth)", pixels(x["hr"]))]
    return plot_panels(path, panels, zoom=zoom)


def _figure(args: argparse.Namespace) -> None:
    """``--figure``: :func:`reference_figure` for the command line's choices."""
    from napari_refsr.devices import choose_device

    if not args.model:
        raise RefSRError("--figure needs a --model")
    kind = next((k for k in args.refs if k != "uninformative"), "similar")
    items = eval_items(args.data, ref_dir=args.ref_dir, crop=args.crop, reference=kind)
    item = next((it for it in items if args.figure_image in (None, it.name)), None)
    if item is None:
        raise RefSRError(f"--figure-image {args.figure_image!r} is not one of {', '.join(i.name for i in items)}")
    box = None
    if args.figure_box:
        parts = args.figure_box.split(",")
        if len(parts) != 4 or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise RefSRError(f"--figure-box takes y,x,h,w (four integers), got {args.figure_box!r}")
        box = tuple(int(p) for p in parts)
    dev = choose_device(args.device)
    network, _ = load_network(args.model[0], dev)
    print(f"wrote {reference_figure(network, item, args.figure, device=dev, box=box, phases=args.phases)}")


def _fmt(value: float, digits: int) -> str:
    return "" if not isinstance(value, float) or math.isnan(value) else f"{value:.{digits}f}"


def _write_csv(path: Path, summary: list[dict], per_image: list[dict]) -> None:
    from napari_refsr.files import atomic_write

    fields = ["method", "level", "reference", "image", "psnr", "ssim", "s_in", "s_out", "n"]
    rows = [{**r, "image": "mean"} for r in summary] + [{**r, "n": 1} for r in per_image]
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "psnr": _fmt(r["psnr"], 4), "ssim": _fmt(r["ssim"], 4),
                    "s_in": _fmt(r["s_in"], 4), "s_out": _fmt(r["s_out"], 4)})
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def _is_cufed(data: str) -> bool:
    from .data.evalsets import cufed5_dir

    return cufed5_dir(Path(data).expanduser()) is not None


def _print_table(rows: list[dict], out) -> None:
    width = max([len("method")] + [len(str(r["method"])) for r in rows])
    print(f"{'method':<{width}}  level  {'reference':<9}  {'PSNR':>7}  {'SSIM':>6}  {'S in':>6}  {'S out':>6}  images",
          file=out)
    for r in rows:
        print(f"{r['method']:<{width}}  {str(r['level']):>5}  {r['reference']:<9}  {r['psnr']:7.3f}  {r['ssim']:6.4f}  "
              f"{_fmt(r['s_in'], 3):>6}  {_fmt(r['s_out'], 3):>6}  {r['n']:>6}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="PSNR/SSIM of TTSR / SRNTT models next to bicubic (TTSR protocol)")
    parser.add_argument("--model", action="append", default=[],
                        help="registry name, inference checkpoint or training checkpoint (repeatable); "
                             "none = bicubic only")
    parser.add_argument("--data", required=True, help="CUFED root / CUFED5 folder, or any folder of HR images")
    parser.add_argument("--level", nargs="+", default=["1"], help="CUFED5 reference level(s): 1..5 and/or all")
    parser.add_argument("--ref-dir", default=None, help="paired references for a plain folder (same file names)")
    parser.add_argument("--crop", type=int, default=None, help="centre-crop images to this size (speed)")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--csv", default=None, help="write the table and per-image values here")
    parser.add_argument("--refs", nargs="+", default=["similar"], choices=REFERENCES,
                        help="kinds of reference for plain folders: similar (the image's other half), overlap (a "
                             "shifted, re-exposed view of the image, 10 %% larger), registered (the same view at the image's "
                             "scale), unrelated (another image's), uninformative "
                             "(the image's own LR↑); S in/out = mean confidence where the reference holds the content "
                             "and where it does not")
    parser.add_argument("--phases", type=int, choices=PHASES, default=None,
                        help="reference copies per axis searched at sub-LR-pixel offsets (default: each "
                             "model's own setting; 1 = the published search)")
    parser.add_argument("--uninformative-ref", action="store_true",
                        help="also run every model with its own LR↑ as the reference (the value of the reference)")
    parser.add_argument("--figure", default=None,
                        help="also write a PNG of what the reference adds (first model, first --refs kind, "
                             "--figure-image): LR↑ / with the reference / with ref = LR↑ / confidence / HR")
    parser.add_argument("--figure-image", default=None, help="image name for --figure (default: the first)")
    parser.add_argument("--figure-box", default=None, help="y,x,h,w region of the HR image for --figure")
    args = parser.parse_args(argv)
    try:
        run(args.model, args.data, levels=_levels(args.level), ref_dir=args.ref_dir, crop=args.crop,
            max_images=args.max_images, device=args.device, csv_path=args.csv,
            uninformative_ref=args.uninformative_ref, references=args.refs, phases=args.phases)
        if args.figure:
            _figure(args)
    except RefSRError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_refsr.errors import RefSRError  # noqa: E402
from napari_refsr.normalize import from_net, to_net  # noqa: E402
from training.data import EvalItem, eval_items  # noqa: E402

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
                     amp_dtype: torch.dtype | None = None, uninformative_ref: bool = False) -> dict:
    """Mean PSNR/SSIM of ``network`` (None: bicubic only) and of bicubic on ``items``.

    ``uninformative_ref``: give the network its own LR↑ as the only reference instead of the real
    ones, which measures how much of its quality comes from the reference.

    Returns ``{"psnr", "ssim", "psnr_bicubic", "ssim_bicubic", "n", "images": [...]}``.
    """
    device = torch.device(device)
    was_training = network.training if network is not None else False
    if network is not None:
        network.eval()
    rows = []
    try:
        for item in items:
            x = item.inputs()
            hr = metric_image(x["hr"][0], quantize=item.quantize, gray=item.gray)
            bic = metric_image(x["lr_up"][0], quantize=item.quantize, gray=item.gray)
            row = {"image": item.name}
            row["psnr_bicubic"], row["ssim_bicubic"] = psnr_ssim(bic, hr)
            refs, refs_du = x["ref"], x["ref_down_up"]
            if uninformative_ref:
                refs, refs_du = [x["lr_up"]], [_down_up_net(x["lr_up"], item.quantize)]
            if network is not None:
                with _autocast(device, amp_dtype):
                    out = network(x["lr"].to(device), x["lr_up"].to(device),
                                  [r.to(device) for r in refs], [r.to(device) for r in refs_du])
                sr = metric_image(out[0][0].float().clamp(-1, 1), quantize=item.quantize, gray=item.gray)
                row["psnr"], row["ssim"] = psnr_ssim(sr, hr)
            rows.append(row)
    finally:
        if network is not None and was_training:
            network.train()
    if not rows:
        raise RefSRError("no evaluation images")
    result = {"n": len(rows), "images": rows}
    for key in rows[0]:
        if key != "image":
            result[key] = float(np.mean([r[key] for r in rows]))
    return result


def _down_up_net(img: torch.Tensor, quantize: bool) -> torch.Tensor:
    """Ref↓↑ of an image in [-1, 1], on the 8-bit grid when the data are 8-bit (as the pipeline)."""
    from napari_refsr.resize import down_up

    return to_net(down_up(from_net(img), 4, quantize=quantize))


def load_network(source: str, device: torch.device) -> tuple[torch.nn.Module, str]:
    """A network from a registry name, an inference checkpoint or a training checkpoint."""
    from training.checkpoints import load_training_checkpoint, network_from_checkpoint

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


def run(models: Sequence[str], data: str, *, levels: Sequence[str] = ("1",), ref_dir: str | None = None,
        crop: int | None = None, max_images: int | None = None, device: str = "auto",
        csv_path: str | None = None, out=None, uninformative_ref: bool = False) -> list[dict]:
    """Evaluate every model (and bicubic) at every level; print a table, write a CSV.
    With ``uninformative_ref`` every model is also run with its own LR↑ as the reference."""
    out = out or sys.stdout
    from napari_refsr.devices import choose_device

    dev = choose_device(device)
    networks = [load_network(m, dev) for m in models]
    summary, per_image = [], []
    for level in levels:
        items = eval_items(data, level=level, ref_dir=ref_dir, crop=crop, max_images=max_images)
        tag = level if ref_dir is None and _is_cufed(data) else "-"
        first = True
        for net, name in networks or [(None, None)]:
            t0 = time.perf_counter()
            res = evaluate_network(net, items, device=dev)
            seconds = time.perf_counter() - t0
            if first:
                summary.append({"method": "bicubic", "level": tag, "psnr": res["psnr_bicubic"],
                                "ssim": res["ssim_bicubic"], "n": res["n"], "seconds": ""})
                per_image += [{"method": "bicubic", "level": tag, "image": r["image"], "psnr": r["psnr_bicubic"],
                               "ssim": r["ssim_bicubic"]} for r in res["images"]]
                first = False
            if net is None:
                continue
            runs = [(name, res, seconds)]
            if uninformative_ref:
                t0 = time.perf_counter()
                runs.append((f"{name} (ref = LR↑)", evaluate_network(net, items, device=dev, uninformative_ref=True),
                             time.perf_counter() - t0))
            for method, r_, secs in runs:
                summary.append({"method": method, "level": tag, "psnr": r_["psnr"], "ssim": r_["ssim"],
                                "n": r_["n"], "seconds": round(secs, 2)})
                per_image += [{"method": method, "level": tag, "image": r["image"], "psnr": r["psnr"],
                               "ssim": r["ssim"]} for r in r_["images"]]
        if ref_dir is not None or not _is_cufed(data):
            break  # levels only mean something for CUFED5
    _print_table(summary, out)
    if csv_path:
        path = Path(csv_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["method", "level", "image", "psnr", "ssim", "n"])
            w.writeheader()
            for row in summary:
                w.writerow({"method": row["method"], "level": row["level"], "image": "mean",
                            "psnr": f"{row['psnr']:.4f}", "ssim": f"{row['ssim']:.4f}", "n": row["n"]})
            for row in per_image:
                w.writerow({**row, "psnr": f"{row['psnr']:.4f}", "ssim": f"{row['ssim']:.4f}", "n": 1})
        print(f"wrote {path}", file=out)
    return summary


def _is_cufed(data: str) -> bool:
    from training.data.evalsets import cufed5_dir

    return cufed5_dir(Path(data).expanduser()) is not None


def _print_table(rows: list[dict], out) -> None:
    width = max([len("method")] + [len(str(r["method"])) for r in rows])
    print(f"{'method':<{width}}  level  {'PSNR':>7}  {'SSIM':>6}  images", file=out)
    for r in rows:
        print(f"{r['method']:<{width}}  {str(r['level']):>5}  {r['psnr']:7.3f}  {r['ssim']:6.4f}  {r['n']:>6}", file=out)


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
    parser.add_argument("--uninformative-ref", action="store_true",
                        help="also run every model with its own LR↑ as the reference (the value of the reference)")
    args = parser.parse_args(argv)
    try:
        run(args.model, args.data, levels=_levels(args.level), ref_dir=args.ref_dir, crop=args.crop,
            max_images=args.max_images, device=args.device, csv_path=args.csv,
            uninformative_ref=args.uninformative_ref)
    except RefSRError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

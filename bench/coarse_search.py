"""Benchmark: the approximate coarse-to-fine search against the exact one, on real features.

For each case (an LR image made from an HR crop, so the ground truth is known, and a
reference), with the shipped model:

* search: the level-3 features of LR↑ against the reference's keys (with the model's phase
  copies where ``--phases`` says so), searched by ``search_padded`` (exact) and
  ``coarse_search_padded``; time, the share of pixels given the exact index, and S (mean, and
  the mean shortfall of the coarse S from the exact S);
* end to end: ``upscale_nd(..., search=...)`` for both; time, PSNR of the coarse output against
  the exact output, and PSNR of each against the HR ground truth.

Cases: "same scene" (the reference is the whole astronaut at 1024², the LR a 4×-reduced
512² crop of it) and "other scene" (the reference is scikit-image's coffee at 1024²).

    nice -n 19 python bench/coarse_search.py --lr 128 --phases 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import napari_refsr as nr  # noqa: E402
from napari_refsr import pipeline  # noqa: E402
from napari_refsr.coarse_search import coarse_search_padded  # noqa: E402
from napari_refsr.normalize import DEFAULT_PERCENTILES  # noqa: E402
from napari_refsr.shift_search import search_padded  # noqa: E402


def images(lr_side: int):
    """(name, LR uint8 (s, s, 3), HR (4s, 4s, 3), reference (1024, 1024, 3)) per case."""
    from PIL import Image
    from skimage import data

    def big(img):
        return np.asarray(Image.fromarray(img).resize((1024, 1024), Image.BICUBIC))

    astro = big(data.astronaut())
    side = 4 * lr_side
    y0 = x0 = (1024 - side) // 2
    hr = astro[y0 : y0 + side, x0 : x0 + side]
    lr = np.asarray(Image.fromarray(hr).resize((lr_side, lr_side), Image.BICUBIC))
    return [("same scene", lr, hr, astro), ("other scene", lr, hr, big(data.coffee()))]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def search_row(model, lr, ref, phases):
    """Time, index agreement and S of both searches on the whole LR's features."""
    prepared = pipeline.prepare(lr, "image")
    refs = pipeline._prepare_refs([ref], False, DEFAULT_PERCENTILES, None)
    engine = pipeline._Engine(model, refs, None, None, phases)
    engine.encode()
    whole = pipeline._whole(prepared)
    (cell,) = whole.cells(10**6, 0)
    with torch.inference_mode():
        q = engine.cell_query(prepared, cell)
        t = time.perf_counter()
        s_ex, i_ex = search_padded(q, engine.keys, normalize_query=True)
        t_ex = time.perf_counter() - t
        t = time.perf_counter()
        s_co, i_co = coarse_search_padded(q, engine.keys, normalize_query=True)
        t_co = time.perf_counter() - t
    n_keys = sum(h * w for h, w in engine.ref_shapes)
    return {"copies": len(engine.ref_shapes), "keys": n_keys, "exact": t_ex, "coarse": t_co,
            "agree": float((i_ex == i_co).float().mean()), "s_exact": float(s_ex.mean()),
            "s_coarse": float(s_co.mean()), "shortfall": float((s_ex - s_co).mean()),
            "worse": float((s_co < s_ex - 1e-5).float().mean())}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lr", type=int, default=128, help="LR side (the HR crop is 4× that)")
    p.add_argument("--phases", type=int, default=1, help="phase copies per axis (1: the published search)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = nr.load_model("refsr-compact", device="cpu", progress=False)
    print(f"refsr-compact, LR {args.lr}², reference 1024², phases {args.phases}, {torch.get_num_threads()} "
          f"torch threads\n")
    print("| case | searched keys | exact search | coarse search | speed-up | same index | mean S exact → coarse "
          "| pixels with a lower S | upscale exact | upscale coarse | PSNR coarse vs exact | PSNR vs HR: exact → coarse |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, lr, hr, ref in images(args.lr):
        r = search_row(model, lr, ref, args.phases)
        out, secs = {}, {}
        for mode in ("exact", "coarse"):
            t = time.perf_counter()
            out[mode] = nr.upscale_nd(model, lr, ref, spatial_axes=(0, 1), channel_axis=2, phases=args.phases,
                                      search=mode).image
            secs[mode] = time.perf_counter() - t
        print(f"| {name} | {r['keys']:,} ({r['copies']} cop{'y' if r['copies'] == 1 else 'ies'}) | {r['exact']:.2f} s "
              f"| {r['coarse']:.2f} s | {r['exact'] / r['coarse']:.1f}× | {100 * r['agree']:.1f} % "
              f"| {r['s_exact']:.4f} → {r['s_coarse']:.4f} | {100 * r['worse']:.1f} % | {secs['exact']:.1f} s "
              f"| {secs['coarse']:.1f} s | {psnr(out['coarse'], out['exact']):.1f} dB "
              f"| {psnr(out['exact'], hr):.2f} → {psnr(out['coarse'], hr):.2f} dB |", flush=True)


if __name__ == "__main__":
    main()

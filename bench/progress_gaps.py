"""Benchmark: how often a long run reports progress, and how fast a cancel acts.

One in-process :func:`napari_refsr.upscale_nd` run (``--lr``² LR made from scikit-image's astronaut,
a ``--ref``² reference, the shipped default model or ``--published`` for the published-size TTSR
with random weights) records the wall time of every ``phase(name, done, total)`` call; the table
gives, per phase, the number of updates and the longest gap between consecutive updates (from the
phase's start). Then, for each phase in ``--cancel-in``, a second run sets a cancel flag from a
timer thread ``--cancel-after`` seconds after that phase started, and reports the latency from
the flag to :class:`~napari_refsr.Cancelled` reaching the caller.

    nice -n 19 python bench/progress_gaps.py --lr 128 --ref 1024
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import napari_refsr as rs  # noqa: E402


def inputs(lr_side: int, ref_side: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from skimage import data

    astro = Image.fromarray(data.astronaut())
    lr = np.asarray(astro.crop((96, 64, 352, 320)).resize((lr_side, lr_side), Image.BICUBIC))
    ref = np.asarray(astro.resize((ref_side, ref_side), Image.BICUBIC))
    return lr, ref


def model(published: bool):
    if not published:
        return rs.load_model(device="cpu")
    import tempfile

    import torch

    from napari_refsr.archs.ttsr import TTSR, TTSRConfig

    torch.manual_seed(0)
    path = Path(tempfile.mkdtemp()) / "ttsr-random.pt"
    torch.save(TTSR(TTSRConfig()).state_dict(), path)
    return rs.load_model(path, device="cpu", cache=False)


def gaps(m, lr, ref, tile: int, phases: int | None) -> dict[str, tuple[int, float, float]]:
    """Phase → (updates, longest gap s, phase duration s) of one whole run."""
    events: list[tuple[float, str]] = []
    rs.upscale_detailed(m, lr, ref, tile=tile, device="cpu", phases=phases,
                        phase=lambda name, d, t: events.append((time.perf_counter(), name)))
    out: dict[str, tuple[int, float, float]] = {}
    for name in dict.fromkeys(n for _, n in events):
        times = [t for t, n in events if n == name]
        gap = max((b - a for a, b in zip(times, times[1:])), default=0.0)
        out[name] = (len(times) - 1, gap, times[-1] - times[0])
    return out


def cancel_latency(m, lr, ref, tile: int, phase_name: str, after: float, phases: int | None) -> float:
    """Seconds from a cancel request (``after`` s into ``phase_name``) to Cancelled in the caller."""
    flag = threading.Event()
    asked: list[float] = []
    timer: list[threading.Timer] = []

    def ask() -> None:
        asked.append(time.perf_counter())
        flag.set()

    def on_phase(name, done, total) -> None:
        if name == phase_name and done == 0 and not timer:
            timer.append(threading.Timer(after, ask))
            timer[0].start()

    try:
        rs.upscale_detailed(m, lr, ref, tile=tile, device="cpu", phase=on_phase, cancel=flag.is_set, phases=phases)
    except rs.Cancelled:
        return time.perf_counter() - asked[0]
    return float("nan")  # finished before the request


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lr", type=int, default=128)
    p.add_argument("--ref", type=int, default=1024)
    p.add_argument("--tile", type=int, default=rs.DEFAULT_TILE)
    p.add_argument("--published", action="store_true", help="the published-size TTSR (random weights)")
    p.add_argument("--phases", type=int, default=None, help="phase copies per axis (default: the model's)")
    p.add_argument("--cancel-in", default="encoding references,searching,running tiles")
    p.add_argument("--cancel-after", type=float, default=2.0)
    args = p.parse_args(argv)
    lr, ref = inputs(args.lr, args.ref)
    m = model(args.published)
    name = "published-size TTSR (random)" if args.published else rs.DEFAULT_MODEL
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; LR {args.lr}², reference {args.ref}², "
          f"{name}, tile {args.tile}, phases {args.phases or 'the model default'}\n")
    print("| phase | updates | longest gap between updates | phase time |")
    print("|---|---|---|---|")
    for phase_name, (n, gap, total) in gaps(m, lr, ref, args.tile, args.phases).items():
        print(f"| {phase_name} | {n} | {gap:.2f} s | {total:.1f} s |", flush=True)
    print("\n| cancel requested | latency to Cancelled |")
    print("|---|---|")
    for phase_name in [c for c in args.cancel_in.split(",") if c]:
        latency = cancel_latency(m, lr, ref, args.tile, phase_name, args.cancel_after, args.phases)
        print(f"| {args.cancel_after:g} s into {phase_name} | {latency:.2f} s |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

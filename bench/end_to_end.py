"""Benchmark: ``refsr upscale`` end to end, an older checkout of the project against this one.

Cases (the fast-search issue's):

* (a) ``examples/lr.png`` + ``examples/ref.png`` with the shipped default model;
* (b) a 128² LR + a 1024² reference with the shipped default model;
* (c) a 256² LR + a 1024² reference with the published-size TTSR (random weights: the cost does
  not depend on them);
* (p) a proxy of (c) for slow code: a 128² LR (one 128-pixel tile of (c)'s nine) + the same
  reference and network.

Each run is a fresh ``python -m napari_refsr upscale ...`` process with ``--device cpu``; its wall
time, CPU time (user + system: on a machine shared with other jobs the steadier measure) and peak
RSS (``/usr/bin/time -v``'s maximum resident set size) are reported. Inputs are made
from scikit-image's astronaut (resized with PIL), so nothing is downloaded. ``--old PATH`` is a
checkout of the older code (e.g. ``git worktree add /tmp/main-old <commit>``); a run that passes
``--time-limit`` seconds is stopped and reported as such. Prints a markdown table.

    nice -n 19 python bench/end_to_end.py --old /tmp/main-old --cases a,b,c --time-limit 1800
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(folder: Path) -> dict[str, tuple[Path, Path, str]]:
    """Case name → (LR file, reference file, model) in ``folder``."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    sys.path.insert(0, str(ROOT))
    from napari_refsr.archs.ttsr import TTSR, TTSRConfig

    astro = Image.fromarray(data.astronaut())
    ref = folder / "ref1024.png"
    astro.resize((1024, 1024), Image.BICUBIC).save(ref)
    lr128, lr256 = folder / "lr128.png", folder / "lr256.png"
    astro.crop((96, 64, 352, 320)).resize((128, 128), Image.BICUBIC).save(lr128)
    np_lr = np.asarray(astro.crop((0, 0, 512, 512)).resize((256, 256), Image.BICUBIC))
    Image.fromarray(np_lr).save(lr256)
    torch.manual_seed(0)
    published = folder / "ttsr-random.pt"
    torch.save(TTSR(TTSRConfig()).state_dict(), published)  # the reference's checkpoint format
    return {
        "a": (ROOT / "examples" / "lr.png", ROOT / "examples" / "ref.png", "refsr-compact"),
        "b": (lr128, ref, "refsr-compact"),
        "c": (lr256, ref, str(published)),
        "p": (lr128, ref, str(published)),
    }


def run_case(tree: Path, lr: Path, ref: Path, model: str, out: Path, limit: float,
             extra: Sequence[str] = ()) -> dict:
    """Run one ``refsr upscale`` in a fresh process from checkout ``tree``: seconds, peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "napari_refsr", "upscale", str(lr), str(ref),
           "-o", str(out), "--model", model, "--device", "cpu", "--quiet", *extra]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"seconds": time.perf_counter() - t0, "timeout": True}
    seconds = time.perf_counter() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr))
    result = {"seconds": seconds, "cpu": cpu, "rss": int(rss.group(1)) * 1024 if rss else None}
    if proc.returncode:
        result["error"] = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()][-1:] or ["failed"]
    return result


def cell(r: dict | None) -> str:
    if r is None:
        return "not run"
    if r.get("timeout"):
        return f"stopped after {r['seconds']:.0f} s"
    if "error" in r:
        return "error: " + r["error"][0][:60]
    return f"{r['seconds']:.0f} s ({r['cpu']:.0f} CPU-s), {r['rss'] / 2**30:.2f} GB"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", type=Path, help="checkout of the older code to compare with")
    p.add_argument("--cases", default="a,b,c")
    p.add_argument("--time-limit", type=float, default=3600.0, help="seconds per run before it is stopped")
    p.add_argument("--old-cases", default=None, help="cases to run with --old (default: all of --cases)")
    p.add_argument("--new-args", default="", help="extra refsr upscale options for this checkout's runs, "
                   "e.g. '--phases 1' for the search an older checkout without phase copies does")
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    old_cases = [c for c in (args.old_cases or args.cases).split(",") if c]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        folder = Path(tmp)
        inputs = make_inputs(folder)
        load = os.getloadavg()[0]
        print(f"{os.cpu_count()} CPUs, load average {load:.1f} at the start; old = {args.old}, new = {ROOT}"
              f"{' ' + args.new_args if args.new_args else ''}\n")
        print("| case | LR | reference | model | old: wall (CPU), peak RSS | new: wall (CPU), peak RSS | speed-up |")
        print("|---|---|---|---|---|---|---|")
        for case in cases:
            lr, ref, model = inputs[case]
            new = run_case(ROOT, lr, ref, model, folder / f"new-{case}.png", args.time_limit, args.new_args.split())
            old = None
            if args.old and case in old_cases:
                old = run_case(args.old, lr, ref, model, folder / f"old-{case}.png", args.time_limit)
            speed = "–"
            if old and new and "error" not in new and "error" not in old and not new.get("timeout"):
                if old.get("timeout"):
                    speed = f">{old['seconds'] / new['seconds']:.1f}× (wall)"
                else:
                    speed = f"{old['seconds'] / new['seconds']:.1f}× wall, {old['cpu'] / new['cpu']:.1f}× CPU"
            from PIL import Image

            size = lambda f: "×".join(map(str, Image.open(f).size[::-1]))  # noqa: E731
            name = "published-size TTSR (random)" if case in "cp" else model
            print(f"| ({case}) | {size(lr)} | {size(ref)} | {name} | {cell(old)} | {cell(new)} | {speed} |", flush=True)
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

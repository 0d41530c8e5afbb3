"""Benchmark: the texture search's effective rate against this machine's float32 matmul rate.

For growing problem sizes (LR and reference level-3 grids, ``--channels`` features, 256 in TTSR)
it measures, each in its own subprocess on fresh random ReLU features,

* dense: the reference's formulation (unfold both maps, normalise, the full relevance matrix,
  max over keys) — only where its matrix fits ``--dense-limit-mb``;
* streaming: the chunked running-argmax search of an older commit (``--old-commit``, read with
  ``git show``: the project's search before the shift-sum), the same operations as dense;
* shift-sum: :func:`napari_refsr.search.search` of this checkout, its eager passes (``fuse=False``);
* shift-sum fused: the same with the work after the pixel products in one compiled kernel
  (``fuse=True``; compiled on a small search first, its compilation time reported apart);

with time, peak memory (torch CPU allocator peak from profiler events, as ``bench/search.py``)
and the effective rate ``N_lr · N_ref · 9C · 2 / time`` — the FLOP rate the dense formulation would
need to be as fast. Next to it, the rate of a 2048² float32 ``torch.mm`` measured in the same
subprocess right before (the physical reference on a loaded machine), and their ratio — in wall
time and in CPU time (process time: steadier when other jobs share the cores). Index
agreement and max |ΔS| compare each method with dense (or with streaming where dense did not run).

    nice -n 19 python bench/search_rate.py --sizes 32x64,64x128,64x256,128x256
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_refsr import search as ts  # noqa: E402

METHODS = ("dense", "streaming", "shift-sum", "shift-sum fused")


def _bench_search_module():
    spec = importlib.util.spec_from_file_location("refsr_bench_search", ROOT / "bench" / "search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_search(commit: str):
    """The ``search`` function of ``napari_refsr/search.py`` at ``commit`` (self-contained there)."""
    source = subprocess.run(["git", "show", f"{commit}:napari_refsr/search.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"search_{commit}")
    exec(compile(source, f"{commit}:napari_refsr/search.py", "exec"), module.__dict__)  # noqa: S102
    return module.search


def dense(query, key):
    q = F.normalize(F.unfold(query[None], 3, padding=1)[0], dim=0)
    k = F.normalize(F.unfold(key[None], 3, padding=1)[0].t(), dim=1)
    s, idx = (k @ q).max(dim=0)
    return s.view(query.shape[1:]), idx.view(query.shape[1:])


def matmul_rate(n: int = 2048, repeats: int = 3) -> tuple[float, float]:
    """FLOP per wall second and per CPU second of a float32 n² ``torch.mm`` (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = best_cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        a @ b
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return 2 * n**3 / best, 2 * n**3 / best_cpu


def worker(method: str, n_lr: int, n_ref: int, c: int, commit: str, save: str) -> dict:
    torch.set_grad_enabled(False)
    g = torch.Generator().manual_seed(0)
    query = torch.randn(c, n_lr, n_lr, generator=g).relu()
    key = torch.randn(c, n_ref, n_ref, generator=g).relu()
    fn = {"dense": lambda: dense(query, key), "shift-sum": lambda: ts.search(query, [key], fuse=False),
          "shift-sum fused": lambda: ts.search(query, [key], fuse=True)}.get(method)
    compile_s = 0.0
    if method == "shift-sum fused":  # compile on a small search, outside the measurement
        t0 = time.perf_counter()
        ts.search(query[:, :8, :8], [key[:, :8, :8]], fuse=True)
        compile_s = time.perf_counter() - t0
        from napari_refsr.shift_search import fused_available

        if fused_available():
            raise SystemExit(f"the fused kernel is not available: {fused_available()}")
    if method == "streaming":
        search = old_search(commit)
        fn = lambda: search(query, [key])  # noqa: E731
    rate = matmul_rate()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        t0, c0 = time.perf_counter(), time.process_time()
        s, idx = fn()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.save({"S": s, "index": idx}, save)
    return {"seconds": seconds, "cpu": cpu, "peak": _bench_search_module().allocator_peak(prof), "mm": rate[0],
            "mm_cpu": rate[1], "compile": compile_s}


def measure(method, n_lr, n_ref, c, commit, threads, save) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--sizes", f"{n_lr}x{n_ref}", "--channels", str(c),
           "--old-commit", commit, "--save", save] + (["--threads", str(threads)] if threads else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="32x64,64x128,64x256,128x256", help="LRxREF level-3 grid sides")
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--old-commit", default="f160d3f", help="commit whose search is the 'streaming' column")
    p.add_argument("--dense-limit-mb", type=float, default=3072.0)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    c = args.channels
    if args.worker:
        print(json.dumps(worker(args.worker, *sizes[0], c, args.old_commit, args.save)))
        return
    methods = [m for m in args.methods.split(",") if m]
    print(f"{os.cpu_count()} CPUs, {args.threads or torch.get_num_threads()} torch threads, C={c}, load average "
          f"{os.getloadavg()[0]:.1f}; streaming = search at {args.old_commit}; rate = N_lr·N_ref·9C·2 / time; "
          "mm = float32 2048² torch.mm in the same process; agreement vs dense (else vs streaming)\n")
    print("| LR grid | Ref grid | method | time (CPU) | peak | effective rate | mm rate | rate / mm | "
          "rate / mm in CPU time | same index | max ΔS | compilation |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for n_lr, n_ref in sizes:
            flops = (n_lr * n_ref) ** 2 * 9 * c * 2
            dense_mb = (n_lr * n_ref) ** 2 * 4 / 2**20 + 9 * c * 4 * (n_lr**2 + n_ref**2) * 2 / 2**20
            results = {}
            for m in methods:
                if m == "dense" and dense_mb > args.dense_limit_mb:
                    continue
                results[m] = measure(m, n_lr, n_ref, c, args.old_commit, args.threads, os.path.join(tmp, f"{m}.pt"))
            base = next((m for m in ("dense", "streaming") if m in results and "error" not in results[m]), None)
            for m, r in results.items():
                if "error" in r:
                    print(f"| {n_lr}² | {n_ref}² | {m} | error: {r['error'][:60]} | | | | | | | | |")
                    continue
                rate = flops / r["seconds"]
                same = delta = "–"
                if base and m != base:
                    a, b = torch.load(os.path.join(tmp, f"{m}.pt")), torch.load(os.path.join(tmp, f"{base}.pt"))
                    same = f"{(a['index'] == b['index']).float().mean().item():.3%}"
                    delta = f"{(a['S'] - b['S']).abs().max().item():.1e}"
                ratio_cpu = (flops / r["cpu"]) / r["mm_cpu"]
                compiled = f"{r['compile']:.1f} s" if r.get("compile") else "–"
                print(f"| {n_lr}² | {n_ref}² | {m} | {r['seconds']:.2f} s ({r['cpu']:.1f}) | {r['peak'] / 2**20:,.0f} MB "
                      f"| {rate / 1e9:,.0f} GFLOP/s | {r['mm'] / 1e9:,.0f} GFLOP/s | {rate / r['mm']:.2f} "
                      f"| {ratio_cpu:.2f} | {same} | {delta} | {compiled} |",
                      flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

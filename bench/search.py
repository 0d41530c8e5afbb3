"""Benchmark: streamed texture search + transfer vs the reference TTSR's dense formulation.

For growing LR sizes (level-3 query grids of ``--channels`` features, 256 in TTSR) against a
reference of matching size, measures time and peak memory of

* ours: ``napari_refsr.search.search`` (memory budget ``--budget-mb``/2) + ``transfer`` at the
  three levels (3×3, 6×6 and 12×12 patches);
* dense: the reference's formulation, written here: unfold + normalise, the full relevance
  matrix R = K·Q, max over keys, then unfold → gather → fold / 9 of the reference's value maps.

Each measurement runs in its own subprocess on fresh inputs. Peak memory on CPU is the peak of
bytes held from torch's CPU allocator during the call (running sum of the profiler's allocation
and free events, kernels' internal buffers included), with the child's RSS high-water delta
(``resource.getrusage``) as a cross-check; on CUDA ``torch.cuda.max_memory_allocated``. Both
count above the inputs (the features of both images), outputs included. The dense run is only
attempted where its predicted peak (:func:`dense_bytes`) is below ``--dense-limit-mb``; larger
sizes show the prediction. Ours' column "bound" is :func:`ours_bytes`. prediction. Prints a markdown table.

    python bench/search.py                       # CPU, sizes 16..128, ~2-3 min on 2 cores
    python bench/search.py --sizes 128,256,512 --device cuda --budget-mb 2048
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_refsr import search as ts  # noqa: E402

LEVELS = ((1, 1), (2, 2), (4, 4))  # (value-map scale, channel divisor): TTSR levels 3, 2, 1


def level_channels(c: int) -> list[int]:
    """Channels of the value maps at levels 3, 2, 1 (256, 128, 64 for TTSR)."""
    return [c // div for _, div in LEVELS]


def dense_bytes(n_query: int, n_key: int, c: int) -> int:
    """Predicted peak of the dense formulation (float32), what the reference holds at once:
    R (N_ref·N_lr), the normalised query/key patches (9C each), the unfolded reference value maps
    (Σ C_l·(3s_l)² per key = 16128 for C=256) and their gathered copies (the same per LR pixel),
    the folded outputs T (Σ C_l·s_l² = 1792 per LR pixel) and, while the last level is folded,
    F.fold's buffer: on CPU its output lives in a buffer as large as its input (9216 per LR px)."""
    per_level = [cl * (3 * s) ** 2 for cl, (s, _) in zip(level_channels(c), LEVELS)]
    folded = sum(cl * s * s for cl, (s, _) in zip(level_channels(c), LEVELS))
    return 4 * (n_key * n_query + 9 * c * (n_query + n_key) + sum(per_level) * (n_query + n_key)
                + (per_level[-1] + folded) * n_query)


def ours_bytes(size: int, ref: int, c: int, search_budget: int) -> int:
    """Predicted upper bound of ours for an LR grid size² and a reference grid ref²: the search
    holds at most its budget (plus padded copies of both feature maps); then each level's
    transfer runs while the earlier levels' T are held: the unfold-fold path below
    ``search.FOLD_BYTES`` of patches (unfolded reference and its concatenated copy, then that
    plus the gathered columns and F.fold's input-sized output buffer), else the offset path
    (padded copy of the value map, padded output, one gathered slice)."""
    nq, nk = size * size, ref * ref
    pads = 4 * c * ((size + 2) ** 2 + (ref + 2) ** 2)
    peak, held = search_budget + pads, 0
    for cl, (s, _) in zip(level_channels(c), LEVELS):
        out = 4 * cl * (s * (size + 2)) ** 2
        col = 4 * cl * (3 * s) ** 2  # bytes of one unfolded patch
        if (nq + nk) * col <= ts.FOLD_BYTES:
            transient = max(2 * nk, nk + 2 * nq) * col
        else:
            transient = 4 * cl * (s * (ref + 2)) ** 2 + out + 4 * cl * nq + 24 * (nk + nq)
        peak = max(peak, held + transient + out)  # + the final crop/÷9 copy of T
        held += 4 * cl * s * s * nq
    return peak + 12 * nq


def largest_side(predict, limit: int) -> int:
    """Largest square LR side n whose predicted peak ``predict(n)`` is <= limit."""
    n = 1
    while n < 1 << 14 and predict(n + 1) <= limit:
        n += 1
    return n


# ------------------------------------------------------------------------------------------
# the two formulations


def make_inputs(size: int, ref: int, c: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(c, size, size, generator=g)
    key = torch.randn(c, ref, ref, generator=g)
    values = [torch.randn(cl, ref * s, ref * s, generator=g) for cl, (s, _) in zip(level_channels(c), LEVELS)]
    return query.to(device), key.to(device), [v.to(device) for v in values]


def run_ours(query, key, values, budget: int):
    s, idx = ts.search(query, [key], budget_bytes=budget)
    ts_maps = [ts.transfer(idx, [v], scale) for v, (scale, _) in zip(values, LEVELS)]
    return s, idx, ts_maps


def run_dense(query, key, values, budget: int):
    """The reference TTSR's SearchTransfer, single image: every intermediate at once."""
    h, w = query.shape[1:]
    q = F.normalize(F.unfold(query[None], kernel_size=3, padding=1), dim=1)  # (1, 9C, Nq)
    k = F.normalize(F.unfold(key[None], kernel_size=3, padding=1).permute(0, 2, 1), dim=2)  # (1, Nk, 9C)
    r = torch.bmm(k, q)  # (1, Nk, Nq)
    s, idx = torch.max(r, dim=1)
    unfolded = [F.unfold(v[None], kernel_size=3 * sc, padding=sc, stride=sc) for v, (sc, _) in zip(values, LEVELS)]
    gathered = [u.gather(2, idx.view(1, 1, -1).expand(-1, u.size(1), -1)) for u in unfolded]
    maps = [F.fold(g, output_size=(h * sc, w * sc), kernel_size=3 * sc, padding=sc, stride=sc)[0] / 9.0
            for g, (sc, _) in zip(gathered, LEVELS)]
    return s.view(h, w), idx.view(h, w), maps


# ------------------------------------------------------------------------------------------
# one measurement (child process)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def allocator_peak(prof) -> int:
    """Peak of bytes held from torch's CPU allocator during the profiled call: the running sum
    of every allocation and free event (kernels' internal buffers included)."""
    from torch._C._profiler import _EventType

    stack, events = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    current = peak = 0
    for _, size in sorted(events):
        current += size
        peak = max(peak, current)
    return peak


def worker(method: str, size: int, ref: int, c: int, device: str, budget: int, save: str | None) -> dict:
    """Time and peak memory of one call on fresh inputs (the inputs themselves not counted)."""
    torch.set_grad_enabled(False)
    fn = run_ours if method == "ours" else run_dense
    fn(*make_inputs(6, 6, c, device, seed=1), budget)  # warm-up: lazy initialisation not counted
    query, key, values = make_inputs(size, ref, c, device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        s, idx, maps = fn(query, key, values, budget)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - base
        rss = None
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            base, before = _rss_bytes(), _maxrss_bytes()  # after the profiler's own set-up
            t0 = time.perf_counter()
            s, idx, maps = fn(query, key, values, budget)
            seconds = time.perf_counter() - t0
        after = _maxrss_bytes()
        peak = allocator_peak(prof)
        # the RSS high-water mark only says something if this call raised it
        rss = after - base if after > before else None
    if save:
        torch.save({"S": s.cpu(), "index": idx.cpu(), "T": [m.cpu() for m in maps]}, save)
    return {"seconds": seconds, "peak": peak, "rss": rss}


def measure(method, size, ref, c, device, budget, threads, save=None) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--sizes", str(size), "--ref-size", str(ref),
           "--channels", str(c), "--device", device, "--budget-mb", repr(budget / 2**20)]
    if threads:
        cmd += ["--threads", str(threads)]
    if save:
        cmd += ["--save", save]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 10 * 2**20 else f"{n / 2**20:.1f} MB"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="16,32,48,64,96,128",
                   help="comma-separated LR grid sides n: n×n level-3 query positions (LR image n×n px)")
    p.add_argument("--ref-size", type=int, default=None,
                   help="reference grid side in key positions (default: the LR side)")
    p.add_argument("--budget-mb", type=float, default=256.0,
                   help="memory budget of one search+transfer; ours gives half of it to search()")
    p.add_argument("--dense-limit-mb", type=float, default=1024.0,
                   help="run the dense formulation only where its predicted peak is below this")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels", type=int, default=256, help="level-3 feature channels (TTSR: 256)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each measurement")
    p.add_argument("--worker", choices=["ours", "dense"], help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    budget = int(args.budget_mb * 2**20)
    c = args.channels
    if c % 4:
        p.error("--channels must be a multiple of 4 (the levels use C, C/2, C/4)")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker:
        size = sizes[0]
        print(json.dumps(worker(args.worker, size, args.ref_size or size, c, args.device, budget, args.save)))
        return

    search_budget = budget // 2
    cpu = args.device == "cpu"
    print(f"device {args.device}, {args.threads or torch.get_num_threads()} threads, C={c}, "
          f"budget {mb(budget)} (ours: search budget_bytes {mb(search_budget)}); peak = "
          + ("torch CPU allocator peak (RSS high-water delta in brackets)" if cpu else "max_memory_allocated")
          + " above the inputs\n")
    print("| LR grid | Ref grid | ours time | ours peak | ours bound | dense time | dense peak "
          "| dense predicted | fits budget: ours / dense | same index | max abs ΔS, ΔT |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def cell(r, key):
        if r is None:
            return "not run"
        if "error" in r:
            return "error: " + r["error"][:60]
        if key == "seconds":
            return f"{r['seconds']:.2f} s"
        extra = f" ({mb(r['rss'])})" if r.get("rss") else ""
        return mb(r["peak"]) + extra

    with tempfile.TemporaryDirectory() as tmp:
        f_ours, f_dense = os.path.join(tmp, "ours.pt"), os.path.join(tmp, "dense.pt")
        for size in sizes:
            ref = args.ref_size or size
            predicted = dense_bytes(size * size, ref * ref, c)
            bound = ours_bytes(size, ref, c, search_budget)
            compare = predicted <= args.dense_limit_mb * 2**20
            ours = measure("ours", size, ref, c, args.device, search_budget, args.threads, f_ours if compare else None)
            dense = measure("dense", size, ref, c, args.device, budget, args.threads, f_dense) if compare else None
            same = delta = "–"
            if dense and "error" not in dense and "error" not in ours:
                a, b = torch.load(f_ours), torch.load(f_dense)
                same = f"{(a['index'] == b['index']).float().mean().item():.2%}"
                diffs = [(a["S"] - b["S"]).abs().max().item()]
                diffs += [(x - y).abs().max().item() for x, y in zip(a["T"], b["T"])]
                delta = f"{max(diffs):.1e}"
            fits_ours = "yes" if "error" not in ours and ours["peak"] <= budget else "NO"
            if dense and "error" not in dense:
                fits_dense = "yes" if dense["peak"] <= budget else "NO"
            else:
                fits_dense = ("yes" if predicted <= budget else "NO") + " (predicted)"
            print(f"| {size}² | {ref}² | {cell(ours, 'seconds')} | {cell(ours, 'peak')} | ≤ {mb(bound)} "
                  f"| {cell(dense, 'seconds')} | {cell(dense, 'peak')} | {mb(predicted)} "
                  f"| {fits_ours} / {fits_dense} | {same} | {delta} |", flush=True)

    fixed_ref = args.ref_size
    dense_n = largest_side(lambda n: dense_bytes(n * n, (fixed_ref or n) ** 2, c), budget)
    ours_n = largest_side(lambda n: ours_bytes(n, fixed_ref or n, c, search_budget), budget)
    what = f"a {fixed_ref}² reference" if fixed_ref else "a reference of the same size"
    print(f"\nLargest square LR grid within {mb(budget)} against {what}, from the formulas above: "
          f"dense {dense_n}² (a {4 * dense_n}² px LR image), ours {ours_n}² ({4 * ours_n}² px). "
          "Dense grows with N_ref·N_lr (R) plus 16128 floats per pixel of each image (C=256); ours "
          "only with the T outputs and padded copies (~1792 floats per pixel) beyond the fixed "
          "search budget.")


if __name__ == "__main__":
    main()

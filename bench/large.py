"""Benchmark: peak memory and time of in-memory vs out-of-core upscaling for growing LR sizes.

For each LR size (square, RGB uint8, a tiled TIFF made here from scikit-image's astronaut), runs the
real CLI in its own process, twice:

* in memory: ``refsr upscale LR.tif REF.png -o OUT.tif`` (the whole image and its ×4 result in RAM);
* out of core: ``refsr upscale LR.tif REF.png -o OUT.ome.zarr`` (chunks with halos, threaded
  scheduler, OME-Zarr with a pyramid).

Peak RSS is the larger of the child's own high-water mark (``os.wait4`` ``ru_maxrss``) and the
sum over its whole process tree sampled every 0.2 s (``--scheduler processes`` starts worker
processes; they count too); time is wall clock and CPU seconds (user + system, all threads and
waited-for children). The model is a tiny untrained TTSR (``--n-feats``, ``--blocks`` residual
blocks per stage); its cost is dominated by parts that do not shrink with it: the fixed VGG19
texture extractor (to relu3_1, run on LR↑ at the output resolution), the texture search and the
transfer of level-1 textures at ×4. The reference is small (``--ref``). Prints a markdown table;
``--skip-inmem-above N`` skips the in-memory run above N; ``--keep`` keeps the outputs.

``--writer OUT`` measures the writing side alone at full scale, without the network: a lazily made
OUT×OUT RGB uint8 array (a cheap pattern per chunk) goes through the real
``napari_refsr.large.write_ome_zarr`` (chunks stored, then the ome-zarr-py pyramid, renamed into
place), in its own process, with peak RSS and time.

``--machinery LR`` runs the whole out-of-core path of the CLI at full size — ``upscale_file``: the
LR² TIFF opened lazily, chunks with halos on the threaded scheduler, the references encoded, every
output chunk stored, the pyramid, the rename — with one substitution, stated in its output: each
chunk's network call is pixel repetition ×4. It measures what the path itself holds in memory at
a size whose network run would take hours here (the network's own per-chunk memory does not grow
with the image; the --sizes runs measure it).

    nice -n 19 python bench/large.py --sizes 1024,2048 --threads 1
    nice -n 5 python bench/large.py --sizes 8192 --modes ooc --threads 1 --workers 2 --chunk 1024 --keep --folder DIR
    xvfb-run -a python bench/napari_lazy.py DIR/out8192.ome.zarr
    nice -n 19 python bench/large.py --writer 32768
    nice -n 19 python bench/large.py --machinery 8192 --threads 1 --keep --folder DIR
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_inputs(folder: Path, size: int, ref_size: int, n_feats: int, blocks: int = 1) -> tuple[Path, Path, Path]:
    import tifffile
    import torch
    from PIL import Image
    from skimage import data

    from napari_refsr.archs.ttsr import TTSR, TTSRConfig

    ckpt = folder / f"tiny-f{n_feats}-b{blocks}.pt"
    if not ckpt.exists():
        torch.manual_seed(0)
        torch.save(TTSR(TTSRConfig(n_feats=n_feats, num_res_blocks=(blocks,) * 4)).state_dict(), ckpt)
    astro = data.astronaut()
    ref = folder / f"ref{ref_size}.png"
    if not ref.exists():
        Image.fromarray(astro[100:100 + 2 * ref_size:2, 150:150 + 2 * ref_size:2]).save(ref)
    lr = folder / f"lr{size}.tif"
    if not lr.exists():
        small = np.asarray(Image.fromarray(astro).resize((256, 256), Image.BICUBIC))
        reps = -(-size // 256)
        tifffile.imwrite(lr, np.tile(small, (reps, reps, 1))[:size, :size], photometric="rgb", tile=(256, 256))
    return ckpt, ref, lr


class TreeRSS:
    """Samples the summed RSS of a process and all its descendants (dask worker processes too)
    every ``interval`` seconds in a thread; ``peak`` is the highest sum seen, in MiB."""

    def __init__(self, pid: int, interval: float = 0.2):
        import threading

        import psutil

        self.root, self.interval, self.peak = psutil.Process(pid), interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> float:
        import psutil

        total = 0
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return 0.0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_child(argv: list[str], log: Path, threads: int | None = None) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak RSS in MiB, exit status) of one command in its own process,
    with ``threads`` torch/OpenMP threads if given. Peak RSS is the larger of the child's own
    high-water mark (``wait4`` ``ru_maxrss``) and the sampled sum over its whole process tree.
    (CPU time includes worker threads; on a shared machine it is the steadier number.)"""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        tree = TreeRSS(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampled = tree.stop()
    cpu = usage.ru_utime + usage.ru_stime
    rss = max(usage.ru_maxrss / 1024.0, sampled)
    return time.perf_counter() - start, cpu, rss, proc.returncode


def _pattern(block_id=None, *, chunk: int) -> np.ndarray:
    """A (3, chunk, chunk) uint8 block with some texture, different per block."""
    yy, xx = np.mgrid[0:chunk, 0:chunk]
    base = ((yy * 7 + xx * 3 + 31 * block_id[1] + 17 * block_id[2]) % 251).astype(np.uint8)
    return np.stack([base, base[::-1], base[:, ::-1]])


def writer_child(out: Path, size: int, chunk: int) -> None:
    """The body of the --writer measurement (runs in its own process)."""
    import dask.array as da

    from napari_refsr.large import write_ome_zarr

    n = size // chunk
    image = da.map_blocks(_pattern, dtype=np.uint8, chunks=((3,), (chunk,) * n, (chunk,) * n), chunk=chunk)
    write_ome_zarr(image, out, "CYX", scale={"Y": 0.25, "X": 0.25}, workers=2)


def _nearest_upscaler(self):
    """Stand-in for ``Job.upscaler`` in the --machinery run: the region of the crop, ×4 by pixel
    repetition (the network's place in the chunk task; everything around it is the real code)."""

    def region_x4(crop, origin, size, region):
        (oy, ox), (y0, y1, x0, x1) = origin, region
        core = np.asarray(crop)[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        return np.repeat(np.repeat(core, 4, axis=0), 4, axis=1)

    return region_x4


def machinery_child(lr: Path, ref: Path, ckpt: Path, out: Path, chunk: int, tile: int, workers: int | None) -> None:
    """The body of the --machinery measurement: ``upscale_file`` (TIFF opened lazily, halos, the
    threaded scheduler, chunks stored, the ome-zarr-py pyramid, rename) with the network call of
    each chunk replaced by pixel repetition, so the out-of-core machinery runs at full size."""
    from PIL import Image

    from napari_refsr.large import chunks, upscale_file
    from napari_refsr.model import load_model

    chunks.Job.upscaler = _nearest_upscaler
    model = load_model(str(ckpt), device="cpu")
    upscale_file(model, lr, [np.asarray(Image.open(ref))], out, chunk=chunk, tile=tile, workers=workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024,2048", help="LR sizes (pixels per side), comma-separated")
    parser.add_argument("--ref", type=int, default=48, help="reference size (pixels per side)")
    parser.add_argument("--n-feats", type=int, default=4, help="TTSR width (the VGG extractor is fixed)")
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks per TTSR stage")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--workers", type=int, default=None, help="dask threads or worker processes (default: the CLI's)")
    parser.add_argument("--scheduler", default=None, help="the CLI's --scheduler for the out-of-core runs "
                        "(threads, processes, or an address); peak RSS covers the worker processes it starts")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (OMP_NUM_THREADS; 1 avoids spinning on a shared machine)")
    parser.add_argument("--skip-inmem-above", type=int, default=1 << 30)
    parser.add_argument("--modes", default="inmem,ooc")
    parser.add_argument("--folder", default=None, help="where inputs and outputs go (default: a temp dir)")
    parser.add_argument("--writer", type=int, default=None, metavar="OUT", help="writer-only run at OUT² output")
    parser.add_argument("--writer-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--machinery", type=int, default=None, metavar="LR",
                        help="the out-of-core path at LR² with pixel repetition in place of the network")
    parser.add_argument("--machinery-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the outputs (e.g. to open them in napari)")
    args = parser.parse_args()

    folder = Path(args.folder or tempfile.mkdtemp(prefix="refsr-bench-large-"))
    folder.mkdir(parents=True, exist_ok=True)
    if args.writer_child:
        writer_child(folder / f"writer{args.writer_child}.ome.zarr", args.writer_child, 4 * args.chunk)
        return
    if args.machinery_child:
        ckpt, ref, lr = make_inputs(folder, args.machinery_child, args.ref, args.n_feats, args.blocks)
        machinery_child(lr, ref, ckpt, folder / f"machinery{args.machinery_child}.ome.zarr", args.chunk, args.tile,
                        args.workers)
        return
    if args.machinery:
        make_inputs(folder, args.machinery, args.ref, args.n_feats, args.blocks)  # not part of the measurement
        out = folder / f"machinery{args.machinery}.ome.zarr"
        argv = [sys.executable, __file__, "--machinery-child", str(args.machinery), "--folder", str(folder),
                "--chunk", str(args.chunk), "--tile", str(args.tile), "--ref", str(args.ref),
                "--n-feats", str(args.n_feats), "--blocks", str(args.blocks)]
        argv += ["--workers", str(args.workers)] if args.workers else []
        seconds, cpu, rss, status = run_child(argv, folder / f"machinery{args.machinery}.log", args.threads)
        gib = 3 * (4 * args.machinery) ** 2 / 2**30
        print(f"| machinery (network → pixel repetition) | {args.machinery}² → {4 * args.machinery}² RGB "
              f"({gib:.2f} GiB) | {seconds:.0f} s wall | {cpu:.0f} s CPU | peak RSS {rss:.0f} MiB | exit {status} |")
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        return
    if args.writer:
        out = folder / f"writer{args.writer}.ome.zarr"
        argv = [sys.executable, __file__, "--writer-child", str(args.writer), "--folder", str(folder),
                "--chunk", str(args.chunk)]
        seconds, cpu, rss, status = run_child(argv, folder / f"writer{args.writer}.log")
        gib = 3 * args.writer ** 2 / 2**30
        print(f"| writer only | {args.writer}² RGB ({gib:.2f} GiB) | {seconds:.0f} s wall | {cpu:.0f} s CPU | "
              f"peak RSS {rss:.0f} MiB | exit {status} |")
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        ckpt, ref, lr = make_inputs(folder, size, args.ref, args.n_feats, args.blocks)
        for mode in args.modes.split(","):
            if mode == "inmem" and size > args.skip_inmem_above:
                rows.append((size, mode, None, None, None, "skipped"))
                continue
            out = folder / (f"out{size}.tif" if mode == "inmem" else f"out{size}.ome.zarr")
            argv = [sys.executable, "-m", "napari_refsr", "upscale", str(lr), str(ref), "-o", str(out),
                    "--model", str(ckpt), "--device", "cpu", "--tile", str(args.tile), "-q"]
            if mode == "ooc":
                argv += ["--chunk", str(args.chunk)] + (["--workers", str(args.workers)] if args.workers else [])
                argv += ["--scheduler", args.scheduler] if args.scheduler else []
            seconds, cpu, rss, status = run_child(argv, folder / f"{mode}{size}.log", args.threads)
            note = "ok" if status == 0 else f"exit {status}: " + (folder / f"{mode}{size}.log").read_text()[-200:]
            rows.append((size, mode, seconds, cpu, rss, note))
            print(f"# {size}² {mode}: {seconds:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss:.0f} MiB, {note}",
                  flush=True)
            if args.keep:
                pass
            elif out.is_dir():
                shutil.rmtree(out)
            elif out.exists():
                out.unlink()
    print()
    print("| LR size | output | path | wall (s) | CPU (s) | peak RSS (MiB) | note |")
    print("|---|---|---|---|---|---|---|")
    for size, mode, seconds, cpu, rss, note in rows:
        path = "in memory (TIFF)" if mode == "inmem" else "out of core (OME-Zarr)"
        cells = ["–" if v is None else f"{v:.0f}" for v in (seconds, cpu, rss)]
        print(f"| {size}² | {4 * size}² | {path} | " + " | ".join(cells) + f" | {note} |")


if __name__ == "__main__":
    main()

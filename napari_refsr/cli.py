"""The ``refsr`` command: ×4 reference-based super-resolution of image files.

::

    refsr upscale LR.png REF.png [REF2.png ...] -o OUT.png [--model NAME|PATH] [--tile N]
          [--device D] [--half] [--confidence CONF.png] [--source SOURCE.tif] [--quiet]
    refsr upscale BIG.ome.zarr|BIG.tif REF.tif -o OUT.ome.zarr [--scheduler threads|processes|ADDRESS]
          [--workers N] [--chunk N] [--channels auto|colour|separate]
    refsr weights list
    refsr weights fetch NAME
    refsr weights pin NAME [SHA256]
    refsr export-bioimageio MODEL -o PACKAGE.zip [--channels 1|3] [--name N] [--author A ...]
          [--licence SPDX] [--test-image LR --test-reference REF]

A multi-page TIFF LR is a stack: every page is upscaled against the same references and the result
is a multi-page TIFF. Outputs keep the LR's dtype and channels; a TIFF's resolution is multiplied by
4 so the upscaled image covers the same physical area. ``--confidence`` writes the soft-attention
map S (the raw float32 values in a TIFF; in a PNG/JPEG an 8-bit picture, white = a perfect match,
through the mapping of :mod:`napari_refsr.confidence`, which the "wrote" line states); ``--source``
writes (TIFF only) an int32 map with, per LR pixel, the reference number and the (row, column) its
texture came from. Every file written is reported on stderr (unless ``--quiet``).

Exit status: 0 success; 2 usage or input error (bad file, image, option, checkpoint or weights —
any :class:`~napari_refsr.RefSRError`); 1 other I/O error or out of memory; 130 interrupted. Errors
are one line ``refsr: error: <message>`` on stderr, and no output file is written.

An ``.ome.zarr`` output (or a zarr input) runs out of core (:mod:`napari_refsr.large`, the ``[large]``
extra): chunk by chunk with halos, on dask's threaded scheduler or a dask.distributed cluster, with a
progress bar over chunks; the OME-Zarr gets a multiscale pyramid and appears only when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from . import __version__
from .defaults import DEFAULT_MODEL, DEFAULT_SEARCH, DEFAULT_TILE, SEARCH_MODES
from .errors import Cancelled, RefSRError
from .large.paths import DEFAULT_CHUNK, is_zarr_path
from .paths import check_no_clash
from .phases import PHASES

if TYPE_CHECKING:  # the parser stays free of heavy imports: torch, numpy and the core load per command
    import numpy as np

PROG = "refsr"
SCALE = 4

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
CHUNKS = "upscaling chunks"  # the out-of-core run's one phase


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as our one-line message (exit 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = _Parser(prog=PROG, description="Reference-based ×4 image super-resolution (TTSR, SRNTT).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    up = sub.add_parser("upscale", help="upscale an image (or a TIFF stack) ×4 using reference images",
                        description="Upscale LR ×4 with texture transferred from one or more reference images.")
    up.add_argument("lr", metavar="LR", help="low-resolution image: PNG, JPEG or TIFF (multi-page = stack)")
    up.add_argument("refs", metavar="REF", nargs="+", help="one or more high-resolution reference images")
    up.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="output file (.png, .jpg or .tif); stacks, 16-bit colour and float need .tif")
    up.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|PATH",
                    help="registry name (see 'refsr weights list') or checkpoint file (default: %(default)s)")
    up.add_argument("--tile", type=_positive_int, default=DEFAULT_TILE, metavar="N",
                    help="tile size in LR pixels; smaller uses less memory (default: %(default)s)")
    up.add_argument("--device", default="auto", metavar="D",
                    help="auto, cpu, cuda, cuda:1, mps (default: %(default)s)")
    up.add_argument("--half", action="store_true", help="half precision on CUDA (faster, less memory)")
    up.add_argument("--phases", type=int, choices=PHASES, default=None,
                    help="also search the references at sub-LR-pixel offsets: 2 or 4 copies per axis (×4 or "
                         "×16 search time and reference memory) for references shifted by a few pixels; "
                         "default: the model's own setting (1 = the published search)")
    up.add_argument("--search", choices=SEARCH_MODES, default=DEFAULT_SEARCH,
                    help="exact: the best reference patch everywhere (the published search); coarse: "
                         "APPROXIMATE coarse-to-fine search, several times faster on big references, a "
                         "good but not always the best patch (default: %(default)s)")
    up.add_argument("--confidence", metavar="CONF", default=None,
                    help="also write the confidence map S at output size (TIFF: raw float32; "
                         "PNG/JPEG: an 8-bit picture, white = perfect match)")
    up.add_argument("--source", metavar="SOURCE.tif", default=None,
                    help="also write the texture source map (reference, row, column per LR pixel; TIFF only)")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    big = up.add_argument_group("out of core (an .ome.zarr output; needs the [large] extra)")
    big.add_argument("--scheduler", default=None, metavar="S",
                     help="threads (default), processes (a local dask cluster) or a dask scheduler address")
    big.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                     help="threads, or worker processes for --scheduler processes")
    big.add_argument("--chunk", type=_positive_int, default=DEFAULT_CHUNK, metavar="N",
                     help="LR pixels per chunk along Y and X (default: %(default)s)")
    big.add_argument("--channels", choices=("auto", "colour", "separate"), default="auto",
                     help="a C axis as RGB colour or as separate grayscale channels (default: %(default)s)")
    up.set_defaults(func=_cmd_upscale)

    w = sub.add_parser("weights", help="list or download named model weights")
    wsub = w.add_subparsers(dest="weights_command", metavar="ACTION", parser_class=_Parser)
    wsub.required = True
    wl = wsub.add_parser("list", help="show the known weights and whether they are downloaded")
    wl.set_defaults(func=_cmd_weights_list)
    wf = wsub.add_parser("fetch", help="download (and verify) weights by name")
    wf.add_argument("name", metavar="NAME")
    wf.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    wf.set_defaults(func=_cmd_weights_fetch)
    wp = wsub.add_parser("pin", help="pin the full sha256 of weights whose publisher gives only a prefix",
                         description="Record the full sha256 of NAME in the weights cache (pins.json); every "
                                     "later download or cached copy must match it. Without SHA256, the digest "
                                     "of the verified file (downloaded now if needed) is recorded.")
    wp.add_argument("name", metavar="NAME")
    wp.add_argument("sha256", metavar="SHA256", nargs="?", help="the full 64-hex-digit sha256 to enforce")
    wp.set_defaults(func=_cmd_weights_pin)

    ex = sub.add_parser("export-bioimageio", help="write a bioimage.io model package (zip, spec 0.5)",
                        description="Package a model for bioimage.io tools (needs the bioimageio extra).")
    ex.add_argument("model", metavar="MODEL", help="registry name or checkpoint file")
    ex.add_argument("-o", "--output", required=True, metavar="PACKAGE.zip")
    ex.add_argument("--channels", type=int, choices=(1, 3), default=3,
                    help="channels per input: 3 (RGB) or 1 (grayscale) (default: %(default)s)")
    ex.add_argument("--name", default=None, help="model name in the package (default: from MODEL)")
    ex.add_argument("--author", action="append", default=None, metavar="NAME", help="an author (repeatable)")
    ex.add_argument("--licence", "--license", default=None, metavar="SPDX",
                    help="SPDX licence id (default: the registry entry's, else MIT)")
    ex.add_argument("--test-image", default=None, metavar="LR",
                    help="LR image for the test tensors and cover (default: a scikit-image sample)")
    ex.add_argument("--test-reference", default=None, metavar="REF", help="its reference (with --test-image)")
    ex.set_defaults(func=_cmd_export_bioimageio)
    return parser


# ------------------------------------------------------------------------------------ upscale


def _layout(meta: dict, ndim: int) -> tuple[tuple[int, int], int | None, str]:
    """(spatial_axes, channel_axis, axes) of an LR array from its reader metadata."""
    axes = meta.get("axes") or ""
    if len(axes) != ndim:
        axes = ("Q" * (ndim - 3) + "YXS") if meta.get("has_channels") else ("Q" * (ndim - 2) + "YX")
    if axes.endswith("S"):
        return (ndim - 3, ndim - 2), ndim - 1, axes
    return (ndim - 2, ndim - 1), None, axes


def _check_slices(array: np.ndarray, has_channels: bool, what: str, min_size: int | None = None) -> None:
    """The core's image check on every 2D slice, naming the file (before any long work starts);
    ``min_size`` defaults to the core's minimum LR side."""
    from .normalize import MIN_SIZE, check_image

    min_size = MIN_SIZE if min_size is None else min_size
    plane = array.shape[-3:] if has_channels else array.shape[-2:]
    for image in array.reshape((-1,) + plane):
        check_image(image, what, min_size)


def _read_reference(path: str) -> np.ndarray:
    from . import imageio
    from .pipeline import MIN_REF

    ref, meta = imageio.read_image_with_meta(path)
    if meta.get("is_stack"):
        raise RefSRError(f"reference {path} is a stack of shape {ref.shape}; a reference must be one 2D image "
                         "(save the page you want as its own file)")
    _check_slices(ref, ref.ndim == 3, f"reference {path}", MIN_REF)
    return ref


def _is_tiff(path: str) -> bool:
    from . import imageio

    return imageio.SUFFIXES.get(Path(path).suffix.lower()) == "tiff"


def _confidence_for(path: str, conf: np.ndarray) -> tuple[np.ndarray, str]:
    """The confidence map as written to ``path`` and a note on it: the raw float32 S for TIFF; for
    PNG/JPEG, which cannot hold floats, the 8-bit angle picture of :mod:`.confidence`."""
    import numpy as np

    from . import confidence

    if _is_tiff(path):
        return conf.astype(np.float32), "raw confidence S (float32 cosine, at most 1)"
    image, window = confidence.to_uint8(conf)
    return image, window.describe()


class _Progress:
    """What a long run is doing, on a terminal's stderr: a transient status line for the steps
    without a count (reading, loading the model) and a tqdm bar per phase of the core
    (``phase(name, done, total)``, :mod:`.progress`), each made when its phase starts, so its rate
    and elapsed time are real from the first line. Nothing is left behind, so an error stays the
    only line."""

    UNITS = {"running tiles": "tile", CHUNKS: "chunk"}

    def __init__(self, enabled: bool, slices: int = 1):
        self.enabled, self.slices = enabled, slices
        self.slice = 0
        self.bar = None
        self.name = None
        self.status = False

    def say(self, text: str) -> None:
        if self.enabled:
            self.close()
            sys.stderr.write(f"\r\x1b[K{PROG}: {text}…")
            sys.stderr.flush()
            self.status = True

    def __call__(self, name: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if name != self.name:
            self.close()
            self.name = name
            if name == "searching":  # each slice of a stack is searched, then its tiles run
                self.slice += 1
            where = f" (slice {self.slice} of {self.slices})" if self.slices > 1 and self.slice else ""
            from tqdm import tqdm

            try:  # a terminal that reports no size (some CI ptys) would get an empty bar
                ncols = os.get_terminal_size(sys.stderr.fileno()).columns or 80
            except (OSError, ValueError, AttributeError):
                ncols = 80
            self.bar = tqdm(total=total, unit=self.UNITS.get(name, "step"), file=sys.stderr,
                            desc=f"{PROG}: {name}{where}", leave=False, ncols=ncols, mininterval=0.2)
        if self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)
        if done >= total:  # the last step is drawn even inside tqdm's redraw interval
            self.bar.refresh()

    def chunks(self, done: int, total: int) -> None:
        """``progress(done, total)`` over the chunks of an out-of-core run."""
        self(CHUNKS, done, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.status:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.status = False
        self.name = None


def _check_paths(args: argparse.Namespace) -> None:
    """No output may be an input or another output, however spelled (before anything is read)."""
    inputs = [("the image LR", args.lr)] + [(f"reference {i}", p) for i, p in enumerate(args.refs, 1)]
    if args.model and Path(args.model).expanduser().is_file():
        inputs.append(("the model", Path(args.model).expanduser()))
    outputs = [("the output -o", args.output)]
    outputs += [("--confidence", args.confidence)] if args.confidence else []
    outputs += [("--source", args.source)] if args.source else []
    check_no_clash(inputs, outputs)


def _out_of_core(args: argparse.Namespace) -> bool:
    big = is_zarr_path(args.output) or is_zarr_path(args.lr) or args.scheduler is not None
    if big and not is_zarr_path(args.output):
        raise RefSRError(f"an out-of-core run writes OME-Zarr: name the output *.ome.zarr, not {args.output}")
    if big and (args.confidence or args.source):
        raise RefSRError("--confidence and --source are not available for an OME-Zarr output")
    return big


def _cmd_upscale_large(args: argparse.Namespace, report: _Progress) -> int:
    from .large import check_target, upscale_file
    from .model import load_model

    check_target(Path(args.output))
    try:
        report.say("reading the references")
        refs = [_read_reference(p) for p in args.refs]
        report.say(f"loading model {args.model}")
        model = load_model(args.model, device=args.device, half=args.half, progress=not args.quiet)
        report.say(f"opening {args.lr}")
        out = upscale_file(model, args.lr, refs, args.output, channels=args.channels, scheduler_spec=args.scheduler,
                           workers=args.workers, chunk=args.chunk, tile=args.tile, device=args.device,
                           phases=args.phases, search=args.search, progress=report.chunks)
    finally:
        report.close()
    if not args.quiet:
        print(f"{PROG}: wrote {out}", file=sys.stderr)
    return EXIT_OK


def _cmd_upscale(args: argparse.Namespace) -> int:
    _check_paths(args)
    report = _Progress(enabled=not args.quiet and sys.stderr.isatty())
    if _out_of_core(args):
        return _cmd_upscale_large(args, report)
    import numpy as np

    from . import imageio

    report.say(f"reading {args.lr}")
    lr, meta = imageio.read_image_with_meta(args.lr)
    spatial, channel_axis, axes = _layout(meta, lr.ndim)
    _check_slices(lr, channel_axis is not None, f"image {args.lr}")
    refs = [_read_reference(p) for p in args.refs]
    report.close()
    report.slices = int(np.prod([n for i, n in enumerate(lr.shape) if i not in spatial and i != channel_axis]))

    # Check every output before the long work: a bad name fails now, not after minutes.
    out_shape = list(lr.shape)
    for a in spatial:
        out_shape[a] *= SCALE
    plain_axes = axes[:-1] if channel_axis is not None else axes
    plain_shape = tuple(s for i, s in enumerate(out_shape) if i != channel_axis)
    lr_plain_shape = tuple(s for i, s in enumerate(lr.shape) if i != channel_axis)
    out_meta = imageio.upscaled_meta(meta, SCALE)
    conf_meta = dict(out_meta, axes=plain_axes, has_channels=False)
    src_meta = dict(meta, axes=plain_axes + "S", has_channels=True, photometric="minisblack")
    imageio.check_writable(args.output, tuple(out_shape), lr.dtype, meta=out_meta)
    if args.confidence:
        conf_dtype = np.float32 if _is_tiff(args.confidence) else np.uint8
        imageio.check_writable(args.confidence, plain_shape, conf_dtype, meta=conf_meta)
    if args.source:
        imageio.check_writable(args.source, lr_plain_shape + (3,), np.int32, meta=src_meta)

    report.say(f"loading model {args.model}")
    from .model import load_model
    from .pipeline import upscale_nd

    try:
        model = load_model(args.model, device=args.device, half=args.half, progress=not args.quiet)
        result = upscale_nd(model, lr, refs, spatial_axes=spatial, channel_axis=channel_axis,
                            tile=args.tile, device=args.device, phases=args.phases, search=args.search,
                            phase=report)
    finally:
        report.close()

    outputs = [(args.output, result.image, out_meta, "")]
    if args.confidence:
        conf, note = _confidence_for(args.confidence, result.confidence)
        outputs.append((args.confidence, conf, dict(conf_meta, description=note), note))
    if args.source:
        outputs.append((args.source, result.source.astype(np.int32), src_meta,
                        "reference number, row, column (reference pixels) per LR pixel"))
    written: list[Path] = []
    try:
        for path, array, meta_out, _ in outputs:
            written.append(imageio.write_image(path, array, meta=meta_out))
    except BaseException:
        for path in written:  # all or nothing: no output of a failed run stays behind
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    if not args.quiet:
        for path, array, _, note in outputs:
            print(f"{PROG}: wrote {path} {tuple(array.shape)} {array.dtype}" + (f"; {note}" if note else ""),
                  file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------------------------ weights


def _cmd_weights_list(args: argparse.Namespace) -> int:
    from . import weights

    rows = weights.list_weights()
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        state = "packaged" if r.get("packaged") else "cached" if r.get("cached") else "not downloaded"
        print(f"{r['name']:<{width}}  {state:<14}  {r.get('description', '')}")
        print(f"{'':<{width}}  {'':<14}  {r.get('path', '')}")
        print(f"{'':<{width}}  {'':<14}  hash: {r.get('hash', '')}")
    return EXIT_OK


def _cmd_weights_pin(args: argparse.Namespace) -> int:
    import pooch

    from . import weights
    from .weights import pins

    spec = weights.get_spec(args.name)
    if not spec.is_prefix_hash:
        raise RefSRError(f"{args.name!r} is already checked against its full digest; nothing to pin")
    path = weights.fetch(args.name, progress=sys.stderr.isatty())  # verified against the published prefix
    actual = pooch.file_hash(str(path), alg="sha256")
    digest = (args.sha256 or actual).strip().lower().removeprefix("sha256:")
    if digest != actual:
        raise RefSRError(f"{path} has sha256 {actual}, not the given {digest}; nothing was pinned")
    where = pins.write_pin(weights.cache_dir(), args.name, digest)
    print(f"{args.name}: sha256 {digest} pinned in {where}")
    return EXIT_OK


def _cmd_weights_fetch(args: argparse.Namespace) -> int:
    from . import weights

    path = weights.fetch(args.name, progress=not args.quiet and sys.stderr.isatty())
    print(path)
    return EXIT_OK


def _cmd_export_bioimageio(args: argparse.Namespace) -> int:
    from .zoo import export_bioimageio

    if (args.test_image is None) != (args.test_reference is None):
        raise RefSRError("give --test-image and --test-reference together")
    tests = None
    if args.test_image:
        from . import imageio

        tests = (imageio.read_image(args.test_image), _read_reference(args.test_reference))
    path = export_bioimageio(args.model, args.output, channels=args.channels, name=args.name,
                             authors=args.author or ("napari-refsr developers",), licence=args.licence,
                             test_images=tests)
    print(path)
    return EXIT_OK


# ------------------------------------------------------------------------------------ main


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {_one_line(message) if isinstance(message, Warning) else message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the ``refsr`` script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.func(args)
        except RefSRError as err:  # includes WeightsError
            status, text = EXIT_USAGE, _one_line(err)
        except Cancelled:
            status, text = EXIT_INTERRUPTED, "cancelled"
        except KeyboardInterrupt:
            status, text = EXIT_INTERRUPTED, "interrupted"
        except MemoryError:
            status, text = EXIT_FAILURE, "out of memory; use a smaller --tile or smaller images"
        except OSError as err:
            where = f"{err.filename}: " if getattr(err, "filename", None) else ""
            status, text = EXIT_FAILURE, f"{where}{err.strerror or _one_line(err)}"
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

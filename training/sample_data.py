"""Write the offline training/validation images of the shipped default model (docs/model-card.md).

Everything comes from scikit-image's bundled data (no download): natural photographs plus
microscopy-like images. Held-out images (``val/``) are never seen in training; ``ihc`` is split by
region (top two thirds train, bottom third held out).

    python training/sample_data.py data/default      # → data/default/train, data/default/val
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from skimage import data

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_refsr.imageio import write_image  # noqa: E402

TRAIN = ["astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
         "hubble_deep_field", "retina", "rocket", "page", "text", "moon", "immunohistochemistry"]
VAL = ["stereo_motorcycle", "cell", "immunohistochemistry"]


def build(out: str | Path) -> tuple[list[Path], list[Path]]:
    """Write ``out/train/*.png`` and ``out/val/*.png``; returns the written paths."""
    out = Path(out)
    written: dict[str, list[Path]] = {"train": [], "val": []}
    for split, names in (("train", TRAIN), ("val", VAL)):
        (out / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            img = getattr(data, name)()
            img = np.asarray(img[0] if isinstance(img, tuple) else img)  # stereo pair: left view
            if name == "immunohistochemistry":
                cut = img.shape[0] * 2 // 3
                img = img[:cut] if split == "train" else img[cut:]
            path = out / split / f"{name}.png"
            write_image(path, np.ascontiguousarray(img))
            written[split].append(path)
    return written["train"], written["val"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to create train/ and val/ in")
    args = parser.parse_args(argv)
    train, val = build(args.out)
    print(f"{len(train)} training and {len(val)} held-out images in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

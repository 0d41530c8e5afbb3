"""The registry of known weights files: data only (what, where from, which hash, which licence)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import WeightsError
from .hashes import digest_len, parse_hash

__all__ = ["WeightSpec", "REGISTRY", "TTSR_PUBLISHED", "MODEL_FORMATS", "FEATURE_FORMATS", "FORMATS",
           "get_spec", "model_names"]

MODEL_FORMATS = ("reference", "mmagic", "refsr")  # checkpoint formats of super-resolution models
FEATURE_FORMATS = ("vgg19",)  # weights of a feature extractor (training: LTE init, perceptual loss)
FORMATS = MODEL_FORMATS + FEATURE_FORMATS

# The published TTSR architecture (reference and OpenMMLab "c64b16" models).
TTSR_PUBLISHED = {"arch": "ttsr", "n_feats": 64, "num_res_blocks": [16, 16, 8, 4],
                  "res_scale": 1.0, "scale": 4}


@dataclass(frozen=True)
class WeightSpec:
    """One downloadable (``url``) or shipped (``packaged``) weights file and how to check it.

    ``hash`` is in pooch's ``known_hash`` form (``"sha256:<hex>"``). A hex part shorter than the
    full digest is a *prefix*: OpenMMLab and torchvision publish only the first 8 hex digits of
    the sha256 (in the file name), so that is all that can honestly be checked for their files.
    """

    name: str
    url: str | None
    filename: str
    hash: str
    format: str
    description: str
    licence: str
    config: dict | None = None
    packaged: str | None = None  # path relative to the package, e.g. "data/<file>"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"{self.name}: format must be one of {FORMATS}, got {self.format!r}")
        if self.url is None and self.packaged is None:
            raise ValueError(f"{self.name}: needs a url or a packaged path")
        parse_hash(self.hash)

    @property
    def is_model(self) -> bool:
        """A super-resolution model (else weights of a feature extractor that training uses)."""
        return self.format in MODEL_FORMATS

    @property
    def is_prefix_hash(self) -> bool:
        """True when only a leading part of the digest is known."""
        alg, hexdigest = parse_hash(self.hash)
        return len(hexdigest) < digest_len(alg)


REGISTRY: dict[str, WeightSpec] = {
    # The default: ships inside the package (no download), hash-checked on every load like the
    # rest. How it was trained and what it measures: docs/model-card.md.
    "refsr-compact": WeightSpec(
        name="refsr-compact",
        url=None,
        filename="refsr-compact.safetensors",
        hash="sha256:6ffffeef8b7bd16fcbc6683e8d3535c09413b136f72d5212a4bb85e4620bbfeb",
        format="refsr",
        description="compact TTSR ×4 (32 features, 4+4+2+1 blocks) trained on scikit-image's "
                    "bundled images; ships with the package, works offline (docs/model-card.md)",
        licence="MIT (this project); trained on scikit-image's bundled images (public domain, CC0 "
                "or no known restrictions; see docs/model-card.md)",
        packaged="data/refsr-compact.safetensors",
    ),
    "ttsr-rec": WeightSpec(
        name="ttsr-rec",
        url="https://download.openmmlab.com/mmediting/restorers/ttsr/"
            "ttsr-rec_x4_c64b16_g1_200k_CUFED_20210525-b0dba584.pth",
        filename="ttsr-rec_x4_c64b16_g1_200k_CUFED_20210525-b0dba584.pth",
        hash="sha256:b0dba584",
        format="mmagic",
        description="TTSR ×4 trained on CUFED with the reconstruction loss only (OpenMMLab); "
                    "best PSNR, smoother textures",
        licence="Apache-2.0 (OpenMMLab model zoo); trained on CUFED5",
        config=dict(TTSR_PUBLISHED),
    ),
    "ttsr-gan": WeightSpec(
        name="ttsr-gan",
        url="https://download.openmmlab.com/mmediting/restorers/ttsr/"
            "ttsr-gan_x4_c64b16_g1_500k_CUFED_20210626-2ab28ca0.pth",
        filename="ttsr-gan_x4_c64b16_g1_500k_CUFED_20210626-2ab28ca0.pth",
        hash="sha256:2ab28ca0",
        format="mmagic",
        description="TTSR ×4 trained on CUFED with perceptual + adversarial losses (OpenMMLab); "
                    "sharper textures, lower PSNR",
        licence="Apache-2.0 (OpenMMLab model zoo); trained on CUFED5",
        config=dict(TTSR_PUBLISHED),
    ),
    "vgg19": WeightSpec(
        name="vgg19",
        url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        filename="vgg19-dcbb9e9d.pth",
        hash="sha256:dcbb9e9d",
        format="vgg19",
        description="torchvision VGG19 ImageNet weights (training: LTE init, perceptual loss)",
        licence="CC BY 4.0 (VGG, Simonyan & Zisserman), distributed by torchvision (BSD-3-Clause)",
    ),
}


def get_spec(name: str) -> WeightSpec:
    """Registry entry by name; an unknown name raises :class:`WeightsError` listing the known ones."""
    spec = REGISTRY.get(name)
    if spec is None:
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise WeightsError(f"unknown weights {name!r}; known names: {known}")
    return spec


def model_names() -> list[str]:
    """Registry names of super-resolution models, in registry order (``vgg19`` and other
    feature-extractor weights used only by training are left out)."""
    return [name for name, spec in REGISTRY.items() if spec.is_model]

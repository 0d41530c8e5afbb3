"""Defaults the front ends show before anything heavy is imported (no torch here: ``refsr --help``
and the napari manifest read these)."""

DEFAULT_MODEL = "refsr-compact"  # shipped in the package: works offline (docs/model-card.md)
DEFAULT_TILE = 128  # LR pixels
DEFAULT_OVERLAP = 16  # LR pixels shared by neighbouring tiles
MIN_TILE = 32
DEFAULT_SEARCH_BUDGET = 256 * 2**20  # bytes of scratch memory one texture search may use
# texture search: "exact" (the best patch, as published) or "coarse" (coarse to fine: approximate,
# several times faster on big references; napari_refsr.coarse_search)
SEARCH_MODES = ("exact", "coarse")
DEFAULT_SEARCH = "exact"

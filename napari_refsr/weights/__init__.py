"""Model weights: the registry of known files (:mod:`.registry`, data only), where files live and
how they are fetched (:mod:`.store`: cache, verified downloads, :func:`resolve`), safe checkpoint
reading and writing (:mod:`.checkpoint`) and file conversion (:mod:`.convert`).

Everything here is plain Python + torch (no napari/Qt), so the CLI, ComfyUI and training use it
too. Files are downloaded with pooch into a cache folder and always verified by hash.
"""

from .checkpoint import EXPORT_FORMAT, EXPORT_VERSION, Checkpoint, load_state_dict_file, read_checkpoint, save_checkpoint
from .convert import convert_srntt_pytorch_file
from .registry import FORMATS, REGISTRY, TTSR_PUBLISHED, WeightSpec, get_spec, model_names
from .store import (BASE_URL_ENV, CACHE_ENV, CHECKPOINT_SUFFIXES, MODELS_ENV, cache_dir, download_url, fetch,
                    find_checkpoints, hash_note, list_weights, resolve, weights_path)

__all__ = [
    "EXPORT_FORMAT", "EXPORT_VERSION", "Checkpoint", "load_state_dict_file", "read_checkpoint", "save_checkpoint",
    "convert_srntt_pytorch_file", "FORMATS", "REGISTRY", "TTSR_PUBLISHED", "WeightSpec", "get_spec", "model_names",
    "BASE_URL_ENV", "CACHE_ENV", "CHECKPOINT_SUFFIXES", "MODELS_ENV", "cache_dir", "download_url", "fetch",
    "find_checkpoints", "hash_note", "list_weights", "resolve", "weights_path",
]

"""The choices of *Load RefSR Model*: registry models and the checkpoints in ``models/refsr``.

A registry model whose file is not here yet is listed as ``"<name> (download)"``, so an offline user
sees which choices need the internet; once downloaded it is listed by its plain name, and its file
(saved in models/refsr under the registry's long file name) is not listed a second time. Either
spelling of a registry name is accepted, so a workflow saved before or after the download still runs.
"""

from __future__ import annotations

import os

import folder_paths
from napari_refsr import DEFAULT_MODEL, weights

__all__ = ["DOWNLOAD_MARK", "FOLDER", "checkpoint_path", "download_dir", "model_names", "register_folder",
           "registry_models", "registry_name"]

FOLDER = "refsr"  # ComfyUI/models/refsr (plus any "refsr:" folder in extra_model_paths.yaml)
DOWNLOAD_MARK = " (download)"


def register_folder() -> None:
    """Make ``models/refsr`` a ComfyUI model folder (idempotent; folder_paths ignores repeats)."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))


def download_dir() -> str | None:
    """Where registry models are downloaded: the first refsr folder (models/refsr by default), or
    the core's cache when the user set ``$NAPARI_REFSR_CACHE`` (shared with napari and the CLI)."""
    if os.environ.get(weights.CACHE_ENV):
        return None
    return folder_paths.get_folder_paths(FOLDER)[0]


def registry_models() -> list[str]:
    """Registry names of super-resolution models, the default first."""
    return sorted(weights.model_names(), key=lambda n: (n != DEFAULT_MODEL, n))


def _registry_file(name: str) -> str:
    """Where the registry model's file is (shipped) or goes (downloaded)."""
    return os.path.abspath(weights.weights_path(name, cache_dir=download_dir()))


def registry_name(choice: str) -> str | None:
    """The registry name behind a choice (``"ttsr-rec (download)"`` and ``"ttsr-rec"`` both give
    ``"ttsr-rec"``); None for anything else."""
    name = choice[: -len(DOWNLOAD_MARK)] if choice.endswith(DOWNLOAD_MARK) else choice
    return name if name in weights.model_names() else None


def _local_checkpoints(registry_files: set[str]) -> list[str]:
    """Checkpoint files in the refsr folders, without hidden files (e.g. unfinished downloads) and
    without downloaded registry files (those are listed by their registry name)."""
    found = []
    for f in folder_paths.get_filename_list(FOLDER):
        if not f.lower().endswith(weights.CHECKPOINT_SUFFIXES) or os.path.basename(f).startswith("."):
            continue
        path = folder_paths.get_full_path(FOLDER, f)
        if path is None or os.path.abspath(path) not in registry_files:
            found.append(f)
    return found


def model_names() -> list[str]:
    """The loader's choices: registry models (default first; marked when they need a download),
    then checkpoint files in models/refsr."""
    register_folder()
    files = {name: _registry_file(name) for name in registry_models()}
    marked = [name if os.path.isfile(path) else name + DOWNLOAD_MARK for name, path in files.items()]
    return marked + _local_checkpoints(set(files.values()))


def checkpoint_path(choice: str) -> str | None:
    """The file of a checkpoint choice in the refsr folders, or None."""
    register_folder()
    if not choice.lower().endswith(weights.CHECKPOINT_SUFFIXES):
        return None
    return folder_paths.get_full_path(FOLDER, choice)

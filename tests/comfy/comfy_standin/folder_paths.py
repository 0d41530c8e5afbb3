"""Stand-in for ComfyUI's ``folder_paths``: named model folders under a base folder.

The base is a fresh temporary folder (like a new ComfyUI install), removed at exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

base_path = tempfile.mkdtemp(prefix="comfy-standin-")
atexit.register(shutil.rmtree, base_path, True)
models_dir = os.path.join(base_path, "models")
input_directory = os.path.join(base_path, "input")

# name -> (folders, allowed extensions); an empty set allows every file, as in ComfyUI
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {
    "upscale_models": ([os.path.join(models_dir, "upscale_models")], supported_pt_extensions),
}


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    """Register a folder for ``folder_name`` (a new name gets no extension filter)."""
    if folder_name not in folder_names_and_paths:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())
        return
    paths = folder_names_and_paths[folder_name][0]
    if full_folder_path in paths:
        if is_default:
            paths.remove(full_folder_path)
            paths.insert(0, full_folder_path)
    elif is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    return list(folder_names_and_paths[folder_name][0])


def get_filename_list(folder_name: str) -> list[str]:
    """Files (relative paths, sorted) in all folders of ``folder_name`` that pass its extension filter."""
    folders, extensions = folder_names_and_paths[folder_name]
    found = set()
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if d != ".git"]
            for name in files:
                if not extensions or os.path.splitext(name)[1].lower() in extensions:
                    found.add(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


def get_full_path(folder_name: str, filename: str) -> str | None:
    """The first existing file ``filename`` in the folders of ``folder_name``, else None."""
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")  # no escaping the folder
    for folder in folder_names_and_paths[folder_name][0]:
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def get_input_directory() -> str:
    return input_directory

"""A tiny checkpoint cannot make the loader allocate gigabytes or build for minutes.

(issue 14, items 2 and 7) Hostile files of a few hundred bytes, for every architecture and format,
loaded by ``load_model`` — the path the CLI, napari and ComfyUI all use — in a subprocess held to
4 GB of address space: each is refused with one line, in seconds, without allocating the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import napari_refsr
from napari_refsr import weights
from napari_refsr.archs.guard import MAX_INT, MAX_PARAMETERS

REPO = Path(napari_refsr.__file__).resolve().parent.parent

_LOADER = textwrap.dedent("""
    import resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
    import napari_refsr
    for path in sys.argv[1:]:
        t = time.perf_counter()
        try:
            napari_refsr.load_model(path, device="cpu", cache=False)
            print("LOADED", path, flush=True)
        except napari_refsr.RefSRError as err:
            print("REFUSED", time.perf_counter() - t, str(err).replace(chr(10), " "), flush=True)
""")


def _export(path: Path, config: dict, tensors: dict | None = None) -> Path:
    tensors = tensors or {"MainNet.SFE.conv_head.weight": torch.zeros(1)}
    save_file(tensors, str(path), metadata={"format": weights.EXPORT_FORMAT, "version": "1",
                                            "config": json.dumps(config), "meta": "{}"})
    return path


def _hostile_files(folder: Path) -> dict[str, Path]:
    deep = folder / "deep.pt"
    torch.save({"MainNet.SFE.conv_head.weight": torch.zeros(8, 3, 3, 3),
                "MainNet.RB11.199999.conv1.weight": torch.zeros(1)}, deep)
    return {
        "wide": _export(folder / "wide.safetensors", {"arch": "ttsr", "n_feats": 20000}),
        "deep": deep,
        "srntt": _export(folder / "srntt.safetensors", {"arch": "srntt", "n_feats": 8, "content_blocks": 100000},
                         {"content.head.weight": torch.zeros(1)}),
        "big": _export(folder / "big.safetensors", {"arch": "ttsr", "n_feats": MAX_INT,
                                                    "num_res_blocks": [16, 16, 8, 4]}),
    }


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> dict[str, tuple[Path, float, str]]:
    """Each hostile file loaded in one subprocess held to 4 GB: name → (file, seconds, message)."""
    files = _hostile_files(tmp_path_factory.mktemp("hostile"))
    proc = subprocess.run([sys.executable, "-c", _LOADER, *map(str, files.values())],
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == len(files), (proc.stdout + proc.stderr)[-2000:]
    out = {}
    for (name, path), line in zip(files.items(), lines):
        assert line.startswith("REFUSED "), line
        _, seconds, message = line.split(" ", 2)
        out[name] = (path, float(seconds), message)
    return out


def test_a_228_byte_safetensors_asking_for_20000_features(refused):
    path, seconds, message = refused["wide"]
    assert path.stat().st_size < 400
    assert "n_feats=20000 is out of bounds" in message and seconds < 10, message


def test_a_reference_checkpoint_with_a_key_for_block_199999(refused):
    path, seconds, message = refused["deep"]
    assert path.stat().st_size < 4000
    assert "num_res_blocks=[0, 200000, 0, 0] is out of bounds" in message and seconds < 10, message


def test_an_srntt_export_with_100000_content_blocks(refused):
    _, seconds, message = refused["srntt"]
    assert "content_blocks=100000 is out of bounds" in message and seconds < 10, message


def test_every_field_within_bounds_but_too_many_parameters_in_total(refused):
    _, seconds, message = refused["big"]
    assert f"more than the {MAX_PARAMETERS:,} allowed" in message and seconds < 20, message


@pytest.mark.parametrize("config, named", [
    ({"arch": "ttsr", "n_feats": 8.0, "num_res_blocks": [1, 1, 1, 1]}, "n_feats=8.0 must hold whole numbers"),
    ({"arch": "ttsr", "n_feats": True}, "n_feats=True"),
    ({"arch": "ttsr", "n_feats": 8, "num_res_blocks": [1, 1.5, 1, 1]}, "num_res_blocks=[1, 1.5, 1, 1]"),
    ({"arch": "srntt", "n_feats": "8"}, None),  # a string is refused by the config itself
    ({"arch": "srntt", "n_feats": 8, "transfer_blocks": [1, -1, 1]}, "transfer_blocks=[1, -1, 1] is out of bounds"),
])
def test_export_configs_with_wrong_types_are_one_line_errors(tmp_path, config, named):
    """Before: ``n_feats: 8.0`` raised a TypeError from inside torch's Conv2d."""
    from conftest import tiny_network

    state = tiny_network().state_dict() if config["arch"] == "ttsr" else {"content.head.weight": torch.zeros(1)}
    path = _export(tmp_path / "odd.safetensors", config, state)
    with pytest.raises(napari_refsr.RefSRError) as info:
        napari_refsr.load_model(path, device="cpu", cache=False)
    assert "\n" not in str(info.value)
    if named:
        assert named in str(info.value), str(info.value)


def test_an_srntt_export_whose_tensors_do_not_fit_is_refused_before_building(tmp_path):
    from napari_refsr.archs.srntt import SRNTT, SRNTTConfig

    cfg = SRNTTConfig(n_feats=8, content_blocks=1, transfer_blocks=(1, 1, 1))
    state = SRNTT(cfg).state_dict()
    state["content.head.weight"] = torch.zeros(9, 3, 3, 3)
    path = _export(tmp_path / "srntt.safetensors", cfg.to_dict(), state)
    with pytest.raises(napari_refsr.RefSRError, match=r"wrong shapes \(content.head.weight \(9, 3, 3, 3\) vs \(8, 3, 3, 3\)"):
        napari_refsr.load_model(path, device="cpu", cache=False)


def test_the_shipped_and_published_shapes_are_within_bounds():
    """The limits leave room for the real models: the published TTSR and SRNTT and the default."""
    from napari_refsr.archs.guard import expected_shapes
    from napari_refsr.archs.srntt import SRNTT, SRNTTConfig
    from napari_refsr.archs.ttsr import TTSR, TTSRConfig

    ttsr = expected_shapes(TTSRConfig, TTSR, weights.TTSR_PUBLISHED)
    assert ttsr == {k: tuple(v.shape) for k, v in TTSR(TTSRConfig()).state_dict().items()}
    srntt = expected_shapes(SRNTTConfig, SRNTT, SRNTTConfig().to_dict())
    assert sum(1 for _ in srntt) == len(SRNTT(SRNTTConfig()).state_dict())
    assert napari_refsr.load_model(napari_refsr.DEFAULT_MODEL, device="cpu").config["n_feats"] == 32

"""The example workflows: where ComfyUI's template browser finds them, and valid against the pack's
nodes and the core node list recorded from a real ComfyUI (tests/comfy/comfy_standin/core_nodes.json).

Both were also loaded from the template browser and run in a real ComfyUI server (docs/comfyui.md).
"""

from __future__ import annotations

import asyncio
import copy
import glob
import json
import os

import pytest
from PIL import Image

from comfy_standin import ROOT, activate

activate()

import folder_paths  # noqa: E402  (the stand-in)

import comfy_nodes  # noqa: E402
from comfy_nodes import example_inputs  # noqa: E402
from comfy_standin.workflow_check import catalogue, check_ui, ui_to_api  # noqa: E402

TEMPLATES = ROOT / "example_workflows"
NAMES = ["refsr_references_blend", "refsr_upscale"]


@pytest.fixture(scope="module")
def nodes():
    pack = asyncio.run(asyncio.run(comfy_nodes.comfy_entrypoint()).get_node_list())
    found, version = catalogue(pack)
    assert version == "0.3.64" and len(found) > 300  # the recorded core list, plus the pack
    return found


def load(name: str, api: bool = False) -> dict:
    return json.loads((TEMPLATES / ("api" if api else "") / f"{name}.json").read_text())


def test_template_browser_lists_the_ui_workflows_with_thumbnails():
    """ComfyUI serves custom_nodes/<pack>/example_workflows/*.json (one level: the api/ copies are
    not listed) and the frontend shows <name>.jpg beside each as its thumbnail."""
    listed = sorted(os.path.splitext(os.path.basename(p))[0]
                    for p in glob.glob(os.path.join(str(ROOT.parent), "*", "example_workflows", "*.json"))
                    if os.path.dirname(os.path.dirname(p)) == str(ROOT))
    assert listed == NAMES
    for name in NAMES:
        assert "nodes" in load(name) and "links" in load(name)  # the UI format, not the API one
        with Image.open(TEMPLATES / f"{name}.jpg") as thumb:
            assert thumb.format == "JPEG" and min(thumb.size) >= 256
        assert "class_type" in next(iter(load(name, api=True).values()))


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_is_valid_against_pack_and_core_nodes(name, nodes):
    assert check_ui(load(name), nodes, set(example_inputs.EXAMPLE_INPUTS)) == []


def test_blend_workflow_uses_several_references_and_the_confidence_as_mask():
    wf = load("refsr_references_blend")
    by_id = {n["id"]: n for n in wf["nodes"]}
    up = next(n for n in wf["nodes"] if n["type"] == "RefSRUpscale")
    fed = {s["name"] for s in up["inputs"] if s.get("link") is not None}
    assert {"reference", "reference_2"} <= fed
    (comp,) = [n for n in wf["nodes"] if n["type"] == "ImageCompositeMasked"]
    sources = {s["name"]: by_id[wf["links"][[lk[0] for lk in wf["links"]].index(s["link"])][1]]["type"]
               for s in comp["inputs"] if s.get("link") is not None}
    assert sources == {"destination": "ImageScaleBy", "source": "RefSRUpscale", "mask": "RefSRUpscale"}


def test_checker_finds_broken_workflows(nodes):
    """The validity check is not vacuous: each kind of damage is reported."""
    files = set(example_inputs.EXAMPLE_INPUTS)
    wf = load("refsr_upscale")
    up = next(n for n in wf["nodes"] if n["type"] == "RefSRUpscale")
    cases = {
        "no such node type": lambda w: w["nodes"][0].update(type="LoadImageX"),
        "carried as": lambda w: w["links"][0].__setitem__(5, "MASK"),
        "not one of": lambda w: next(n for n in w["nodes"] if n["type"] == "LoadImage")["widgets_values"]
        .__setitem__(0, "missing.png"),
        "outside": lambda w: next(n for n in w["nodes"] if n["id"] == up["id"])["widgets_values"].__setitem__(0, 8),
        "not connected": lambda w: (w["links"].remove(next(lk for lk in w["links"] if lk[3] == up["id"])), None),
    }
    for message, damage in cases.items():
        broken = copy.deepcopy(wf)
        damage(broken)
        assert any(message in e for e in check_ui(broken, nodes, files)), message


@pytest.mark.parametrize("name", NAMES)
def test_api_copy_is_the_ui_workflow_in_api_format(name, nodes):
    """example_workflows/api/ holds what the frontend's graphToPrompt makes of each UI workflow."""
    assert load(name, api=True) == ui_to_api(load(name), nodes)


def test_example_images_are_copied_into_the_input_folder_once(tmp_path, monkeypatch, caplog):
    target = tmp_path / "input"
    monkeypatch.setattr(folder_paths, "input_directory", str(target))
    target.mkdir()
    (target / "refsr_example_ref.png").write_bytes(b"the user's own file")
    copied = example_inputs.install_example_inputs()
    assert copied == ["refsr_example_lr.png", "refsr_example_ref_detail.png"]
    assert (target / "refsr_example_ref.png").read_bytes() == b"the user's own file"  # never replaced
    assert (target / "refsr_example_lr.png").read_bytes() == (ROOT / "examples" / "lr.png").read_bytes()
    assert example_inputs.install_example_inputs() == []
    assert sorted(p.name for p in target.iterdir()) == sorted(example_inputs.EXAMPLE_INPUTS)  # no temp files
    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_bytes(b"")
    assert example_inputs.install_example_inputs() == [] and "could not copy" in caplog.text

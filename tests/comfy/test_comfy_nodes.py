"""The ComfyUI node pack against a stand-in of the ComfyUI modules it calls (tests/comfy/comfy_standin).

Real parts everywhere else: a tiny TTSR checkpoint saved into the stand-in's models/refsr, the real
core, a real HTTP server on 127.0.0.1 for the download path. The run in a real ComfyUI server is
described in docs/comfyui.md.
"""

from __future__ import annotations

import asyncio
import http.server
import inspect
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_standin import activate

activate()

import comfy.model_management as mm  # noqa: E402  (the stand-in)
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
from comfy_api.latest import ComfyExtension  # noqa: E402

import comfy_nodes  # noqa: E402
import napari_refsr  # noqa: E402
from comfy_nodes import nodes as cn  # noqa: E402
from comfy_nodes.grayscale import split_batch  # noqa: E402
from napari_refsr.archs.ttsr import TTSR, TTSRConfig  # noqa: E402
from napari_refsr.errors import RefSRError, WeightsError  # noqa: E402
from napari_refsr.resize import resize_bicubic  # noqa: E402
from napari_refsr.tiling import plan_cells  # noqa: E402

REFSR_DIR = Path(folder_paths.models_dir) / "refsr"
DOWNLOADABLE = "ttsr-rec"  # a registry model that is downloaded (the default ships in the package)


@pytest.fixture(scope="module")
def tiny_file() -> Path:
    """A tiny TTSR state dict in the (stand-in) ComfyUI's models/refsr folder."""
    REFSR_DIR.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    path = REFSR_DIR / "tiny.pt"
    torch.save(TTSR(TTSRConfig(n_feats=8, num_res_blocks=(1, 1, 1, 1))).state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def clean_comfy_state():
    """Each test starts with no recorded calls, no interrupt and no progress hook."""
    mm.calls.clear()
    mm.interrupt_current_processing(False)
    comfy.utils.set_progress_bar_global_hook(None)
    yield
    mm.interrupt_current_processing(False)
    comfy.utils.set_progress_bar_global_hook(None)


def run(node, **inputs):
    """Execute a node the way ComfyUI does: keyword inputs by schema id, optional ones only when
    connected; returns the outputs tuple."""
    schema = node.define_schema()
    ids = {i.id for i in schema.inputs}
    required = {i.id for i in schema.inputs if not i.optional}
    assert set(inputs) <= ids, f"unknown inputs {set(inputs) - ids}"
    assert required <= set(inputs), f"missing required inputs {required - set(inputs)}"
    out = node.execute(**inputs)
    assert len(out.args) == len(schema.outputs)
    return out.args


@pytest.fixture
def model(tiny_file):
    (m,) = run(cn.LoadRefSRModel, model_name="tiny.pt")
    return m


def _texture(rng, h, w, smooth=4) -> np.ndarray:
    """A (h, w, 3) float32 image in 0..1 with structure at several scales."""
    coarse = torch.from_numpy(rng.random((3, h // smooth, w // smooth), dtype=np.float32))
    img = resize_bicubic(coarse * 255, (h, w)).clamp(0, 255) / 255
    return img.permute(1, 2, 0).numpy() * 0.7 + rng.random((h, w, 3), dtype=np.float32) * 0.3


def _down4(img: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(img).permute(2, 0, 1) * 255
    small = resize_bicubic(t, (img.shape[0] // 4, img.shape[1] // 4)).clamp(0, 255) / 255
    return small.permute(1, 2, 0).numpy()


def _image(*arrays) -> torch.Tensor:
    """ComfyUI IMAGE batch [B, H, W, C] from (H, W, C) arrays."""
    return torch.from_numpy(np.stack(arrays)).float()


@pytest.fixture(scope="module")
def scene():
    """A high-res scene, its ×4-smaller version and another (the LR batch), an unrelated texture, and
    a 36×16 LR image that needs two 32-pixel tiles."""
    rng = np.random.default_rng(1)
    hr = _texture(rng, 64, 48)
    other = _texture(rng, 64, 48)
    return {"hr": hr, "lr": [_down4(hr), _down4(other)], "noise": _texture(rng, 64, 48, smooth=1),
            "big": _down4(_texture(rng, 144, 64))}


# --------------------------------------------------------------------------- loading and schema


def test_entrypoint_returns_extension_with_both_nodes_and_no_v1_mappings():
    ext = asyncio.run(comfy_nodes.comfy_entrypoint())
    assert isinstance(ext, ComfyExtension)
    assert asyncio.run(ext.get_node_list()) == [cn.LoadRefSRModel, cn.RefSRUpscale]
    # NODE_CLASS_MAPPINGS would make ComfyUI load the pack as V1 and skip comfy_entrypoint
    assert not hasattr(comfy_nodes, "NODE_CLASS_MAPPINGS") and not hasattr(cn, "NODE_CLASS_MAPPINGS")
    assert str(REFSR_DIR) in folder_paths.get_folder_paths("refsr")


def test_schemas_types_tooltips_and_execute_signatures(tiny_file):
    loader, up = cn.LoadRefSRModel.define_schema(), cn.RefSRUpscale.define_schema()
    assert (loader.node_id, loader.display_name) == ("RefSRModelLoader", "Load RefSR Model")
    assert (up.node_id, up.display_name) == ("RefSRUpscale", "RefSR Upscale")
    assert (loader.category, up.category) == ("loaders", "image/upscaling")  # beside ComfyUI's own
    for schema in (loader, up):
        for item in schema.inputs + schema.outputs:
            assert isinstance(item.tooltip, str) and len(item.tooltip) > 20, item.id
        ids = [i.id for i in schema.inputs] + [o.id for o in schema.outputs if o.id]
        assert len(ids) == len(set(ids)), "ComfyUI rejects repeated ids"
    assert [(i.id, i.io_type, i.optional) for i in loader.inputs] == [("model_name", "COMBO", False)]
    assert [o.io_type for o in loader.outputs] == ["REFSR_MODEL"]
    assert [(i.id, i.io_type, i.optional) for i in up.inputs] == [
        ("image", "IMAGE", False), ("reference", "IMAGE", False), ("refsr_model", "REFSR_MODEL", False),
        ("tile_size", "INT", False), ("search", "COMBO", True), ("reference_2", "IMAGE", True),
        ("reference_3", "IMAGE", True)]
    tile = up.inputs[3]
    assert (tile.default, tile.min) == (napari_refsr.DEFAULT_TILE, 32) and tile.max >= 512
    assert [o.io_type for o in up.outputs] == ["IMAGE", "MASK"]
    assert "clipped to 0..1" in up.outputs[1].tooltip
    # ComfyUI calls execute with the input ids as keywords; optional ones may be left out
    for node, schema in ((cn.LoadRefSRModel, loader), (cn.RefSRUpscale, up)):
        params = inspect.signature(node.execute).parameters
        assert list(params) == [i.id for i in schema.inputs]
        for i in schema.inputs:
            if i.optional:
                assert params[i.id].default is None


def test_newer_schema_fields_only_where_the_running_comfyui_has_them(monkeypatch):
    """search_aliases came after ComfyUI 0.3.64 (whose io.Schema the stand-in copies): passed to a
    newer io.Schema, left out for 0.3.64, which would reject the unknown keyword."""
    from dataclasses import dataclass, field

    from comfy_api.latest import io

    with pytest.raises(TypeError):
        io.Schema(node_id="x", search_aliases=["y"])
    assert cn.schema_extras(search_aliases=["y"]) == {}
    assert cn.LoadRefSRModel.define_schema().node_id == "RefSRModelLoader"

    @dataclass
    class NewerSchema(io.Schema):
        search_aliases: list = field(default_factory=list)

    monkeypatch.setattr(io, "Schema", NewerSchema)
    assert "ttsr" in cn.LoadRefSRModel.define_schema().search_aliases


def test_model_list_has_registry_models_then_checkpoints(tiny_file):
    (REFSR_DIR / "sub").mkdir(exist_ok=True)
    extra = [REFSR_DIR / "sub" / "b.safetensors", REFSR_DIR / "notes.txt", REFSR_DIR / ".x.pth.part"]
    for p in extra:
        p.write_bytes(b"x")
    try:
        names = cn.LoadRefSRModel.define_schema().inputs[0].options
    finally:
        for p in extra:
            p.unlink()
    registry = [n for n, s in napari_refsr.weights.REGISTRY.items() if s.format != "vgg19"]
    # the shipped default first and unmarked; the others need a download (none is in models/refsr)
    assert names[0] == napari_refsr.DEFAULT_MODEL
    assert set(names[: len(registry)]) == {napari_refsr.DEFAULT_MODEL} | {
        f"{n} (download)" for n in registry if n != napari_refsr.DEFAULT_MODEL}
    assert "vgg19" not in " ".join(names)
    assert names[len(registry):] == [os.path.join("sub", "b.safetensors"), "tiny.pt"]


def test_downloaded_registry_model_is_listed_once_by_its_name(tiny_file):
    """A registry file in models/refsr (downloaded, or saved there by hand as the offline message says)
    drops the download mark and is not listed again under its long file name."""
    spec = napari_refsr.weights.REGISTRY[DOWNLOADABLE]
    assert f"{DOWNLOADABLE} (download)" in cn.model_names()
    (REFSR_DIR / spec.filename).write_bytes(b"x")
    try:
        names = cn.model_names()
    finally:
        (REFSR_DIR / spec.filename).unlink()
    assert DOWNLOADABLE in names and f"{DOWNLOADABLE} (download)" not in names
    assert spec.filename not in names and names.count(DOWNLOADABLE) == 1


def test_model_name_validation_accepts_both_spellings_of_a_registry_model(tiny_file):
    """ComfyUI skips its own list check for inputs that validate_inputs takes; a workflow saved with
    'ttsr-rec (download)' still validates once the file is there, and one saved with 'ttsr-rec'
    before the download."""
    validate = cn.LoadRefSRModel.validate_inputs
    for name in (DOWNLOADABLE, f"{DOWNLOADABLE} (download)", napari_refsr.DEFAULT_MODEL, "tiny.pt"):
        assert validate(model_name=name) is True, name
    for bad in ("gone.pt", "vgg19", "no-such-model (download)"):
        message = validate(model_name=bad)
        assert isinstance(message, str) and repr(bad) in message and "not found" in message


def test_loader_gives_a_cpu_model_from_the_refsr_folder(model, tiny_file):
    assert isinstance(model, napari_refsr.RefSRModel)
    assert model.device.type == "cpu" and model.config["n_feats"] == 8
    ref = torch.load(tiny_file, weights_only=True)
    assert torch.equal(model.network.state_dict()["MainNet.SFE.conv_head.weight"], ref["MainNet.SFE.conv_head.weight"])


def test_missing_model_file_is_a_clear_error(tiny_file):
    with pytest.raises(RefSRError, match=r"'gone\.pt' not found in .*refsr.*put the checkpoint"):
        run(cn.LoadRefSRModel, model_name="gone.pt")
    with pytest.raises(RefSRError, match="neither|not found"):
        run(cn.LoadRefSRModel, model_name="no-such-model")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_registry_model_offline_names_the_refsr_folder(tiny_file, monkeypatch):
    spec = napari_refsr.weights.REGISTRY[DOWNLOADABLE]
    monkeypatch.setenv(napari_refsr.weights.BASE_URL_ENV, f"http://127.0.0.1:{_free_port()}")  # nobody listens
    with pytest.raises(WeightsError) as info:
        run(cn.LoadRefSRModel, model_name=DOWNLOADABLE)
    assert "could not download" in str(info.value)
    assert str(REFSR_DIR / spec.filename) in str(info.value)  # where to put the file by hand
    assert sorted(p.name for p in REFSR_DIR.iterdir() if p.is_file()) == ["tiny.pt"]


def test_registry_model_uses_the_core_cache_when_the_user_sets_it(tiny_file, monkeypatch, tmp_path):
    spec = napari_refsr.weights.REGISTRY[DOWNLOADABLE]
    monkeypatch.setenv(napari_refsr.weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(napari_refsr.weights.BASE_URL_ENV, f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(WeightsError) as info:
        run(cn.LoadRefSRModel, model_name=DOWNLOADABLE)
    assert str(tmp_path / "cache" / spec.filename) in str(info.value)


def test_registry_model_is_downloaded_into_the_refsr_folder(tiny_file, monkeypatch):
    """A real download from 127.0.0.1: the request asks for the registry file, lands in models/refsr,
    fails the hash check (these bytes are not the published weights) and leaves nothing behind."""
    requested = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            body = b"not the weights" * 100
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(napari_refsr.weights.BASE_URL_ENV, f"http://127.0.0.1:{server.server_port}/w")
        with pytest.raises(WeightsError, match="expected"):
            run(cn.LoadRefSRModel, model_name=f"{DOWNLOADABLE} (download)")  # as the list offers it
    finally:
        server.shutdown()
        server.server_close()
    assert requested == [f"/w/{napari_refsr.weights.REGISTRY[DOWNLOADABLE].filename}"]
    assert sorted(p.name for p in REFSR_DIR.iterdir() if p.is_file()) == ["tiny.pt"]


# --------------------------------------------------------------------------- upscaling


def test_upscale_batch_shapes_range_and_comfy_services(model, scene, monkeypatch):
    events, moves = [], []
    comfy.utils.set_progress_bar_global_hook(lambda v, t, preview, node_id=None: events.append((v, t)))
    comfy_device = torch.device("cpu", 0)  # distinguishable from the default "cpu", and runs here
    monkeypatch.setattr(mm, "get_torch_device", lambda: comfy_device)
    original_to = model.to
    monkeypatch.setattr(model, "to", lambda device="auto", half=None: moves.append(device) or original_to(device, half))
    image = _image(*scene["lr"])  # [2, 16, 12, 3]
    out, mask = run(cn.RefSRUpscale, image=image, reference=_image(scene["hr"]), refsr_model=model, tile_size=32)
    # ComfyUI's device and memory manager first, the cache emptied after; the model back on the CPU
    assert mm.calls[0] == ("free_memory", mm.calls[0][1], comfy_device) and mm.calls[0][1] > 2**20
    assert moves[0] == comfy_device and moves[-1] == "cpu" and model.device == torch.device("cpu")
    assert mm.calls[-1] == ("soft_empty_cache",)
    assert out.shape == (2, 64, 48, 3) and out.dtype == torch.float32
    assert mask.shape == (2, 64, 48) and mask.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1 and 0 <= mask.min() and mask.max() <= 1
    assert out.std() > 0.05  # an image, not a constant
    # every image of the batch is what the core gives for it alone (the batch is a loop, nothing else)
    for b in range(2):
        alone, conf = napari_refsr.upscale(model, scene["lr"][b], scene["hr"], tile=32, device="cpu",
                                           value_range=(0, 1), return_confidence=True)
        np.testing.assert_allclose(out[b].numpy(), np.clip(alone, 0, 1), atol=1e-6)
        np.testing.assert_allclose(mask[b].numpy(), np.clip(conf, 0, 1), atol=1e-6)
    # progress through comfy.utils.ProgressBar: every step of the core (encoding the references,
    # each search step, each tile) over both images, counting up to a total known from the start
    values = [v for v, _ in events]
    assert values == list(range(1, len(events) + 1)) and {t for _, t in events} == {len(events)}
    # encoding (the reference's keys, its values) + per image: two search steps (a CPU step takes
    # at most 12 of the LR's 16 rows), one tile
    assert len(events) == 2 + 2 * (2 + 1)


def test_several_references_second_third_input_and_batch(model, scene):
    lr = _image(scene["lr"][0])
    hr, noise = _image(scene["hr"]), _image(scene["noise"])
    flipped = _image(np.ascontiguousarray(scene["noise"][::-1]))
    out_inputs, conf_inputs = run(cn.RefSRUpscale, image=lr, reference=noise, refsr_model=model, tile_size=64,
                                  reference_2=flipped, reference_3=hr)
    out_batch, conf_batch = run(cn.RefSRUpscale, image=lr, reference=torch.cat([noise, flipped, hr]),
                                refsr_model=model, tile_size=64)
    # a reference batch is the same as the references on separate inputs
    torch.testing.assert_close(out_inputs, out_batch, rtol=0, atol=0)
    torch.testing.assert_close(conf_inputs, conf_batch, rtol=0, atol=0)
    # the core sees three references, and most texture comes from the matching third one
    res = napari_refsr.upscale_detailed(model, scene["lr"][0], [scene["noise"], flipped[0].numpy(), scene["hr"]],
                                        tile=64, device="cpu", value_range=(0, 1))
    np.testing.assert_allclose(out_inputs[0].numpy(), np.clip(res.image, 0, 1), atol=1e-6)
    assert set(np.unique(res.source[..., 0])) <= {0, 1, 2} and (res.source[..., 0] == 2).mean() > 0.5


def test_grayscale_images_take_the_gray_path_and_keep_equal_channels(model, scene):
    """Load Image gives a grayscale file as RGB with equal channels: such images run through the core's
    grayscale path (colour references turned to luma) and come back with three equal channels, while
    a colour image of the same batch stays colour; progress counts over the whole batch."""
    gray_lr = np.repeat(scene["lr"][0].mean(axis=-1, keepdims=True), 3, axis=-1)
    events = []
    comfy.utils.set_progress_bar_global_hook(lambda v, t, preview, node_id=None: events.append((v, t)))
    out, mask = run(cn.RefSRUpscale, image=_image(gray_lr, scene["lr"][1], gray_lr), reference=_image(scene["hr"]),
                    refsr_model=model, tile_size=32)
    assert out.shape == (3, 64, 48, 3)
    for b in (0, 2):
        assert torch.equal(out[b, ..., 0], out[b, ..., 1]) and torch.equal(out[b, ..., 1], out[b, ..., 2])
    luma = scene["hr"] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gray, conf = napari_refsr.upscale(model, gray_lr[..., 0], luma, tile=32, device="cpu", value_range=(0, 1),
                                      return_confidence=True)
    np.testing.assert_allclose(out[0, ..., 0].numpy(), np.clip(gray, 0, 1), atol=1e-6)
    np.testing.assert_allclose(mask[0].numpy(), np.clip(conf, 0, 1), atol=1e-6)
    colour = napari_refsr.upscale(model, scene["lr"][1], scene["hr"], tile=32, device="cpu", value_range=(0, 1))
    np.testing.assert_allclose(out[1].numpy(), np.clip(colour, 0, 1), atol=1e-6)
    # as RGB the same image would come back with colour fringes: the gray path is what removes them
    as_rgb = napari_refsr.upscale(model, gray_lr, scene["hr"], tile=32, device="cpu", value_range=(0, 1))
    assert np.abs(as_rgb[..., 0] - as_rgb[..., 1]).max() > 1e-3
    values, totals = [v for v, _ in events], {t for _, t in events}
    assert values == sorted(values) and len(totals) == 1 and events[-1][0] == events[-1][1]  # one bar, to its end


def test_grayscale_reference_guides_a_gray_image_and_rgba_is_not_gray(model, scene):
    gray_lr = np.repeat(scene["lr"][0][..., :1], 3, axis=-1)
    gray_ref = np.repeat(scene["hr"][..., 1:2], 3, axis=-1)
    out, _ = run(cn.RefSRUpscale, image=_image(gray_lr), reference=_image(gray_ref), refsr_model=model, tile_size=32)
    alone = napari_refsr.upscale(model, gray_lr[..., 0], gray_ref[..., 0], tile=32, device="cpu", value_range=(0, 1))
    np.testing.assert_allclose(out[0, ..., 2].numpy(), np.clip(alone, 0, 1), atol=1e-6)
    # four channels (RGBA) are never taken for gray, even with equal colour channels
    rgba = np.concatenate([gray_lr, np.ones_like(gray_lr[..., :1])], axis=-1)
    assert not split_batch(rgba[None])[0][1]


def test_out_of_memory_retries_with_smaller_tiles(model, scene, monkeypatch):
    """ComfyUI's OOM_EXCEPTION raised once by the network: the node still delivers, with 32-pixel tiles."""
    assert mm.OOM_EXCEPTION is torch.cuda.OutOfMemoryError
    lr, ref = _image(scene["big"]), _image(scene["hr"])
    (expected, expected_mask) = run(cn.RefSRUpscale, image=lr, reference=ref, refsr_model=model, tile_size=32)
    original = model.network.decode
    tiles = []

    def flaky(lr_t, *args):
        tiles.append(tuple(lr_t.shape[-2:]))
        if len(tiles) == 1:
            raise mm.OOM_EXCEPTION("CUDA out of memory. Tried to allocate 4.00 GiB")
        return original(lr_t, *args)

    monkeypatch.setattr(model.network, "decode", flaky)
    out, mask = run(cn.RefSRUpscale, image=lr, reference=ref, refsr_model=model, tile_size=64)
    assert tiles == [(36, 16), (32, 16), (32, 16)]  # one 36-pixel tile failed; two 32-pixel tiles ran
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(mask, expected_mask, rtol=0, atol=0)


def test_out_of_memory_at_the_smallest_tile_is_a_clear_error(model, scene, monkeypatch):
    def always(*args, **kwargs):
        raise mm.OOM_EXCEPTION("CUDA out of memory.")

    monkeypatch.setattr(model.network, "decode", always)
    with pytest.raises(RefSRError, match="out of memory even with 32-pixel tiles"):
        run(cn.RefSRUpscale, image=_image(scene["lr"][0]), reference=_image(scene["hr"]), refsr_model=model,
            tile_size=128)
    assert mm.calls[-1] == ("soft_empty_cache",) and model.device.type == "cpu"


def test_search_input_runs_the_coarse_search(model, scene):
    """The optional "search" combo: "coarse" gives the core's coarse-to-fine result; left out, the
    exact search runs."""
    (search,) = [i for i in cn.RefSRUpscale.define_schema().inputs if i.id == "search"]
    assert search.optional and search.options == ["exact", "coarse"] and search.default == "exact"
    image, ref = _image(scene["lr"][1]), _image(scene["hr"])  # another scene: imperfect matches
    coarse_out, coarse_mask = run(cn.RefSRUpscale, image=image, reference=ref, refsr_model=model, tile_size=32,
                                  search="coarse")
    _, exact_mask = run(cn.RefSRUpscale, image=image, reference=ref, refsr_model=model, tile_size=32)
    coarse, conf = napari_refsr.upscale(model, scene["lr"][1], scene["hr"], tile=32, device="cpu",
                                        value_range=(0, 1), search="coarse", return_confidence=True)
    np.testing.assert_allclose(coarse_out[0].numpy(), np.clip(coarse, 0, 1), atol=1e-6)
    np.testing.assert_allclose(coarse_mask[0].numpy(), np.clip(conf, 0, 1), atol=1e-6)
    assert not torch.equal(coarse_mask, exact_mask)  # other patches somewhere: the confidence S differs


def test_interrupt_from_the_progress_hook_stops_the_node(model, scene):
    """The server's progress hook raises InterruptProcessingException when the user cancels."""
    from napari_refsr.shift_search import count_steps, plan_steps

    events = []
    cells = plan_cells(36, 16, 32, napari_refsr.DEFAULT_OVERLAP)
    keys = [(scene["hr"].shape[0] // 4, scene["hr"].shape[1] // 4)]
    shapes = [(c.y1 - c.y0, c.x1 - c.x0) for c in cells]
    search = sum(count_steps(shape, keys, plan_steps(shape, keys)) for shape in shapes)
    first_tile = 2 + search + 1  # encoding (keys, values), the search, the first tile

    def server_hook(value, total, preview, node_id=None):
        events.append((value, total))
        if value == first_tile:
            mm.interrupt_current_processing(True)  # the user presses Cancel during the first tile
        mm.throw_exception_if_processing_interrupted()

    comfy.utils.set_progress_bar_global_hook(server_hook)
    with pytest.raises(mm.InterruptProcessingException):
        run(cn.RefSRUpscale, image=_image(scene["big"]), reference=_image(scene["hr"]), refsr_model=model,
            tile_size=32)
    # encoding, the search (several steps per search cell), the first of two tiles; then stopped
    assert len(cells) == 3 and search > len(cells)
    assert events == [(v, first_tile + 1) for v in range(1, first_tile + 1)]
    assert not mm.processing_interrupted() and model.device.type == "cpu"


def test_search_ticks_and_interrupts_step_by_step(model, scene, monkeypatch):
    """On a big reference the search is many steps: the bar moves with each, and an interrupt
    during the search stops it at the next step, before any tile runs (here the steps are made
    small so that CI-sized images have many)."""
    monkeypatch.setattr(napari_refsr.shift_search, "BLOCK_ELEMENTS", 4096)
    events, decoded = [], []

    def server_hook(value, total, preview, node_id=None):
        events.append((value, total))
        if value == 6:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    comfy.utils.set_progress_bar_global_hook(server_hook)
    monkeypatch.setattr(model.network, "decode", lambda *a: decoded.append(1))
    with pytest.raises(mm.InterruptProcessingException):
        run(cn.RefSRUpscale, image=_image(scene["big"]), reference=_image(scene["hr"]), refsr_model=model,
            tile_size=32)
    total = events[0][1]
    assert total > 10 and [v for v, _ in events] == [1, 2, 3, 4, 5, 6] and not decoded


def test_interrupt_without_a_progress_hook_stops_the_node(model, scene, monkeypatch):
    """Without a server hook the node's own interrupt check (the core's cancel) stops the run,
    within the tile that was running (the core polls it inside the network's forward pass)."""
    original = model.network.decode
    tiles = []

    def cancel_in_first(*args, **kwargs):
        tiles.append(1)
        mm.interrupt_current_processing(True)
        return original(*args, **kwargs)

    monkeypatch.setattr(model.network, "decode", cancel_in_first)
    with pytest.raises(mm.InterruptProcessingException):
        run(cn.RefSRUpscale, image=_image(scene["big"]), reference=_image(scene["hr"]), refsr_model=model,
            tile_size=32)
    assert len(tiles) == 1 and not mm.processing_interrupted()


def test_bad_inputs_are_clear_errors(model, scene):
    with pytest.raises(RefSRError, match=r"image must be a ComfyUI IMAGE batch \[B, H, W, C\]; got \(16, 12, 3\)"):
        run(cn.RefSRUpscale, image=torch.from_numpy(scene["lr"][0]), reference=_image(scene["hr"]),
            refsr_model=model, tile_size=32)
    tiny_ref = torch.rand(1, 8, 8, 3)
    with pytest.raises(RefSRError, match="reference 1 .* too small"):
        run(cn.RefSRUpscale, image=_image(scene["lr"][0]), reference=tiny_ref, refsr_model=model, tile_size=32)


def test_srntt_export_loads_and_upscales_through_the_nodes(scene):
    """SRNTT is selectable in ComfyUI too: an exported SRNTT checkpoint in models/refsr."""
    from napari_refsr.archs.srntt import SRNTT, SRNTTConfig
    from napari_refsr.weights import save_checkpoint

    torch.manual_seed(0)
    net = SRNTT(SRNTTConfig(n_feats=8, content_blocks=1, transfer_blocks=(1, 1, 1)))
    path = save_checkpoint(REFSR_DIR / "tiny-srntt.pt", net.state_dict(), net.config.to_dict())
    try:
        assert "tiny-srntt.pt" in cn.model_names()
        (model,) = run(cn.LoadRefSRModel, model_name="tiny-srntt.pt")
        assert model.arch == "srntt"
        out, mask = run(cn.RefSRUpscale, image=_image(scene["lr"][0]), reference=_image(scene["hr"]),
                        refsr_model=model, tile_size=32)
        assert out.shape == (1, 64, 48, 3) and mask.shape == (1, 64, 48)
        alone = napari_refsr.upscale(model, scene["lr"][0], scene["hr"], tile=32, device="cpu", value_range=(0, 1))
        np.testing.assert_allclose(out[0].numpy(), np.clip(alone, 0, 1), atol=1e-6)
    finally:
        path.unlink()

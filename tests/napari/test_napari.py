"""The napari plugin with a real viewer under Xvfb (pytest-xvfb): manifest, Layers menu, widget runs
on a uint16 stack with a tiny real model, cancel, errors, sample data, the TIFF writer.

Deselect with ``-m "not gui"`` for core-only runs.
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
torch = pytest.importorskip("torch")

from napari.layers import Image, Labels  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402

from napari_refsr.archs.ttsr import TTSR, TTSRConfig  # noqa: E402
import napari_refsr  # noqa: E402
from napari_refsr import weights  # noqa: E402
from napari_refsr._napari import _large, _sample_data, _widget  # noqa: E402
from napari_refsr._napari._convert import placement  # noqa: E402
from napari_refsr.shift_search import count_steps, plan_steps  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-refsr"
WIDGET = "Reference super-resolution"
REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "napari_refsr" / "napari.yaml"  # the copy that ships in the wheel


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread is ~10× faster than two
    (no OpenMP barrier waits on a descheduled sibling). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """A real (untrained) small TTSR checkpoint in the reference's flat state-dict format."""
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(TTSR(TTSRConfig(n_feats=8, num_res_blocks=(1, 1, 1, 1))).state_dict(), path)
    return path


def _widget_for(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert isinstance(widget, _widget.RefSRWidget)
    return widget


def _setup(widget, lr, refs, checkpoint, monkeypatch):
    """Choose layers and the checkpoint the way a user does ("Browse for a checkpoint…")."""
    widget.image.value = lr
    widget.references.value = list(refs)
    monkeypatch.setattr(_widget.QFileDialog, "getOpenFileName", lambda *a, **k: (str(checkpoint), ""))
    widget.model.value = _widget.BROWSE
    assert widget.model.value == str(checkpoint)
    widget.device.value = "cpu"
    widget.tile.value = 32


def _wait_idle(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def _hold_after_first_step(widget, message: str | None = None):
    """Hold the worker right after its first step (or the step reported with ``message``) until
    ``go`` is set, so a test can click Cancel with no race. Returns (that step done, go, the steps
    seen: (done, total), or (done, total, message) when ``message`` is given)."""
    first, go, seen = threading.Event(), threading.Event(), []

    def in_worker(done, total, text):
        if total:
            seen.append((done, total) if message is None else (done, total, text))
            if (done == 1) if message is None else (text == message):
                first.set()
                go.wait(30)

    widget.relay.progress.connect(in_worker, Qt.ConnectionType.DirectConnection)
    return first, go, seen


def _footprint(layer, corner_lo, corner_hi):
    """World coordinates of the outer pixel edges (data coordinates ± 0.5)."""
    return np.asarray(layer.data_to_world(corner_lo)), np.asarray(layer.data_to_world(corner_hi))


# --------------------------------------------------------------------------- manifest and menu


def test_top_level_manifest_is_the_shipped_one():
    """The top-level napari.yaml (the fixed repository layout) must not drift from the package's."""
    assert (REPO / "napari.yaml").read_bytes() == MANIFEST.read_bytes()


def test_manifest_validates_with_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()
    installed = PluginManifest.from_distribution(PLUGIN)  # the entry point napari discovers
    assert installed.contributions.commands == manifest.contributions.commands
    ids = {c.id for c in manifest.contributions.commands}
    for menu_items in manifest.contributions.menus.values():
        assert {item.command for item in menu_items} <= ids


def test_layers_menu_id_is_accepted_and_opens_the_widget(make_napari_viewer):
    from app_model.types import MenuItem
    from napari._app_model import get_app_model
    from napari._app_model.constants import MenuId
    from npe2 import PluginManifest

    menus = PluginManifest.from_file(MANIFEST).contributions.menus
    allowed = {str(m.value) for m in MenuId.contributables()}
    assert set(menus) <= allowed and "napari/layers/filter" in menus

    viewer = make_napari_viewer()
    app = get_app_model()
    items = [i for i in app.menus.get_menu("napari/layers/filter") if isinstance(i, MenuItem)]
    ids = [i.command.id for i in items]
    assert "napari-refsr.make_widget" in ids
    app.commands.execute_command("napari-refsr.make_widget").result()
    docked = [w for w in viewer.window.dock_widgets.values() if isinstance(w, _widget.RefSRWidget)]
    assert len(docked) == 1


# --------------------------------------------------------------------------- running


def test_widget_upscales_uint16_stack(make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch, errors):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    stack = (rng.random((3, 24, 24)) * 50000 + 1000).astype(np.uint16)
    lr = viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.25), translate=(1.0, 10.0, -3.0),
                          units=("um", "um", "um"), axis_labels=("z", "y", "x"),
                          metadata={"experiment": "e1"}, contrast_limits=(1000, 40000), colormap="green")
    ref = viewer.add_image((rng.random((24, 28)) * 60000).astype(np.uint16), name="ref")
    widget = _widget_for(viewer)
    _setup(widget, lr, [ref], tiny_checkpoint, monkeypatch)
    assert (widget.y_axis.value, widget.x_axis.value, widget.channel_axis.value) == (1, 2, _widget.NO_CHANNEL)
    widget.add_confidence.value = True
    widget.add_source.value = True
    n_before = len(viewer.layers)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari ≥ 0.9: scene.camera
    camera.center, camera.zoom = (0.0, 500.0, 500.0), 0.05  # far away, zoomed out

    widget.run_button.clicked()
    assert widget.running
    _wait_idle(qtbot, widget)
    assert errors == []
    # the whole job's steps: encoding the reference (keys, values), then per slice its search
    # steps (the 24×24 query against the 6×7 key grid: two, 12 rows each) and one tile
    search = count_steps((24, 24), [(6, 7)], plan_steps((24, 24), [(6, 7)]))
    assert search == 2
    assert widget.progress.value == widget.progress.max == 2 + 3 * (search + 1)

    out = viewer.layers["stack ×4"]
    assert out.data.shape == (3, 96, 96) and out.data.dtype == np.uint16
    np.testing.assert_allclose(out.scale, [2.0, 0.125, 0.0625])
    np.testing.assert_allclose(out.translate, [1.0, 10.0 - 0.25 + 0.0625, -3.0 - 0.125 + 0.03125])
    for z in range(3):  # the pixel footprints cover the same world extent
        lo_in, hi_in = _footprint(lr, (z, -0.5, -0.5), (z, 23.5, 23.5))
        lo_out, hi_out = _footprint(out, (z, -0.5, -0.5), (z, 95.5, 95.5))
        half_pixel = np.asarray(out.scale) / 2
        assert np.all(np.abs(lo_out - lo_in) <= half_pixel) and np.all(np.abs(hi_out - hi_in) <= half_pixel)
        np.testing.assert_allclose(lo_out, lo_in, atol=1e-9)
        np.testing.assert_allclose(hi_out, hi_in, atol=1e-9)
    assert [str(u) for u in out.units] == ["micrometer"] * 3
    assert tuple(out.axis_labels) == ("z", "y", "x")
    assert out.metadata["experiment"] == "e1" and out.metadata["refsr"]["references"] == ["ref"]
    np.testing.assert_allclose(out.contrast_limits, (1000, 40000))
    assert out.colormap.name == "green"
    assert len(np.unique(out.data)) > 100  # a real image, not a constant

    conf = viewer.layers["stack ×4 confidence"]
    assert conf.data.shape == (3, 96, 96) and conf.data.dtype == np.float32
    np.testing.assert_allclose(conf.scale, out.scale)
    np.testing.assert_allclose(conf.translate, out.translate)
    src = viewer.layers["stack source reference"]
    assert isinstance(src, Labels) and src.data.shape == (3, 24, 24)
    assert set(np.unique(src.data)) == {1}  # every texture came from reference 1
    np.testing.assert_allclose(src.scale, lr.scale)
    np.testing.assert_allclose(src.translate, lr.translate)
    rows = viewer.layers["stack source row"].data
    cols = viewer.layers["stack source column"].data
    assert rows.shape == cols.shape == (3, 24, 24)
    assert 0 <= rows.min() and rows.max() < 24 and 0 <= cols.min() and cols.max() < 28
    assert len(viewer.layers) == n_before + 5
    offered = set(widget.references.choices) | set(widget.image.choices)
    assert out in offered and conf not in offered  # maps are not offered as inputs
    assert viewer.layers.selection.active is out
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    # the view is fitted to the result
    lo, hi = out.extent.world[:, -2:]
    np.testing.assert_allclose(camera.center[-2:], (lo + hi) / 2, atol=1e-6)
    assert float(np.max(hi - lo)) * camera.zoom > 200  # the 12-unit result fills the canvas
    # napari's layer list elides long names in the middle: the ends still tell the results apart
    from qtpy.QtGui import QFontMetrics
    from qtpy.QtWidgets import QApplication

    metrics = QFontMetrics(QApplication.font())
    results = [layer.name for layer in viewer.layers][n_before:]
    narrow = metrics.horizontalAdvance("stack ×4 confid")
    elided = {metrics.elidedText(name, Qt.TextElideMode.ElideMiddle, narrow) for name in results}
    assert len(elided) == len(results) == 5, elided


def test_dock_keeps_its_width_with_long_texts(make_napari_viewer, qtbot, tiny_checkpoint):
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((24, 24), np.uint8), name="a layer with a rather long name " * 3)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)

    def settled_width():
        for _ in range(5):
            QApplication.processEvents()
        return dock.width()

    before, hint = settled_width(), widget.native.minimumSizeHint().width()
    widget._set_status("error: " + "a reference with other channels than the image, and more words " * 5)
    widget.select_checkpoint(Path("/a/very/long/folder") / ("sub" * 40) / tiny_checkpoint.name)
    assert settled_width() <= before + 2 and widget.native.minimumSizeHint().width() <= hint + 2
    assert widget.status.native.wordWrap()  # the message wraps instead (all of it stays readable)


def test_axis_choices_are_valid_and_named_in_user_terms(make_napari_viewer, qtbot, tiny_checkpoint,
                                                        monkeypatch, errors):
    viewer = make_napari_viewer()
    stack = viewer.add_image(np.zeros((5, 40, 300), np.uint16), name="zyx", axis_labels=("z", "y", "x"))
    ref = viewer.add_image(np.zeros((40, 40), np.uint16), name="ref")
    widget = _widget_for(viewer)
    _setup(widget, stack, [ref], tiny_checkpoint, monkeypatch)
    # a 5-plane Z axis is offered neither as Y/X (too short) nor as channels (not 3 or 4 planes)
    assert widget.y_axis.choices == (1, 2) and widget.x_axis.choices == (2,)
    assert widget.channel_axis.choices == (_widget.NO_CHANNEL,)
    assert widget.y_axis.native.itemText(0) == "y (axis 1, 40 px)"
    widget.y_axis.value = 2  # choosing X's axis as Y swaps them
    assert (widget.y_axis.value, widget.x_axis.value) == (2, 1)

    cyxc = viewer.add_image(np.zeros((3, 20, 24, 4), np.uint8), name="cyxc")
    widget.image.value = cyxc
    assert (widget.y_axis.value, widget.x_axis.value) == (1, 2)
    assert widget.channel_axis.choices == (_widget.NO_CHANNEL, 0, 3)

    tiny = viewer.add_image(np.zeros((10, 12), np.uint8), name="tiny")
    widget.image.value = tiny
    dims_before = viewer.dims.range
    widget.run_button.clicked()  # refused at once, in the user's terms, without a worker
    assert not widget.running and viewer.dims.range == dims_before
    assert "no two axes of at least 16 pixels" in errors[-1] and "axis 0 (10 px)" in errors[-1]


def test_axis_check_messages():
    from napari_refsr._napari._axes import check_axes

    labels = ("z", "y", "x")
    check_axes((5, 40, 300), labels, 1, 2, None, "s")
    cases = [((1, 1, None), "Y and X must be different axes (both are y (axis 1, 40 px))"),
             ((0, 2, None), "the Y axis, z (axis 0, 5 px), has only 5 pixels"),
             ((1, 2, 0), "the channel axis, z (axis 0, 5 px), has 5 planes"),
             ((1, 2, 2), "x (axis 2, 300 px) cannot be the channel axis and a spatial axis")]
    for (y, x, c), message in cases:
        with pytest.raises(napari_refsr.RefSRError, match=re.escape(message)):
            check_axes((5, 40, 300), labels, y, x, c, "s")


def test_cancel_stops_mid_stack(make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch, errors):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    lr = viewer.add_image((rng.random((4, 24, 24)) * 4000).astype(np.uint16), name="stack")
    ref = viewer.add_image((rng.random((24, 24)) * 4000).astype(np.uint16), name="ref")
    widget = _widget_for(viewer)
    _setup(widget, lr, [ref], tiny_checkpoint, monkeypatch)

    # hold the worker right after the first slice's tile until Cancel has been clicked (no race)
    first_tile, go, seen = _hold_after_first_step(widget, "running tiles: 1 of 1")
    n_before = len(viewer.layers)
    widget.run_button.clicked()
    qtbot.waitUntil(first_tile.is_set, timeout=120_000)
    assert widget.cancel_button.enabled
    widget.cancel_button.clicked()
    go.set()
    _wait_idle(qtbot, widget)

    # stopped after the first of four slices: encoding, its search steps and its tile
    n = count_steps((24, 24), [(6, 6)], plan_steps((24, 24), [(6, 6)]))  # the search's steps per slice
    assert n >= 2
    assert seen[-1] == (2 + n + 1, 2 + 4 * (n + 1), "running tiles: 1 of 1")
    assert [m for *_, m in seen] == (["encoding references: 1 of 2", "encoding references: 2 of 2"]
                                     + [f"searching: {i} of {n}" for i in range(n + 1)]
                                     + ["running tiles: 0 of 1", "running tiles: 1 of 1"])
    assert len(viewer.layers) == n_before and errors == []
    assert widget.status.value == "cancelled"
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_reference_with_other_channels_shows_error(make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch,
                                                   errors):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(2)
    lr = viewer.add_image((rng.random((24, 24)) * 4000).astype(np.uint16), name="gray")
    ref = viewer.add_image((rng.random((32, 32, 3)) * 255).astype(np.uint8), name="colour ref", rgb=True)
    widget = _widget_for(viewer)
    _setup(widget, lr, [ref], tiny_checkpoint, monkeypatch)
    n_before = len(viewer.layers)

    widget.run_button.clicked()
    _wait_idle(qtbot, widget)

    assert len(viewer.layers) == n_before
    assert len(errors) == 1 and "reference 1 is colour but the image is grayscale" in errors[0]
    assert widget.status.value.startswith("error:")
    assert widget.run_button.enabled  # ready for the next run
    widget.references.value = []
    widget.run_button.clicked()  # a missing reference is reported at once, without a worker
    assert not widget.running and "at least one reference" in errors[-1]


def test_rgb_layer_keeps_colour_and_placement(make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch, errors):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(3)
    lr = viewer.add_image((rng.random((16, 20, 3)) * 255).astype(np.uint8), name="rgb", rgb=True,
                          scale=(3.0, 3.0), translate=(5.0, 7.0), rotate=30)
    ref = viewer.add_image((rng.random((24, 24, 3)) * 255).astype(np.uint8), name="ref", rgb=True)
    widget = _widget_for(viewer)
    _setup(widget, lr, [ref], tiny_checkpoint, monkeypatch)
    assert not widget.y_axis.enabled  # an RGB layer's axes are fixed

    widget.run_button.clicked()
    _wait_idle(qtbot, widget)
    assert errors == []
    out = viewer.layers["rgb ×4"]
    assert out.rgb and out.data.shape == (64, 80, 3) and out.data.dtype == np.uint8
    # with a rotation the corners of the pixel grid still coincide in the world
    for corner in ((-0.5, -0.5), (15.5, 19.5), (-0.5, 19.5), (15.5, -0.5)):
        out_corner = tuple(4 * c + 1.5 for c in corner)  # the same edge on the ×4 grid
        np.testing.assert_allclose(out.data_to_world(out_corner), lr.data_to_world(corner), atol=1e-9)


def test_search_choice_runs_the_coarse_search(make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch, errors):
    """The Search choice reaches the core: "coarse (approximate, faster)" gives upscale_nd's
    coarse-to-fine result, not the exact one."""
    viewer = make_napari_viewer()
    yy, xx = np.mgrid[0:96, 0:96]
    scene = ((np.sin(yy / 3.0) * np.cos(xx / 5.0) + 1) * 100 + np.random.default_rng(4).random((96, 96)) * 50)
    scene = scene.astype(np.uint8)
    lr = viewer.add_image(np.ascontiguousarray(scene[10:34, 20:48]), name="lr")
    ref = viewer.add_image(scene, name="ref")
    widget = _widget_for(viewer)
    _setup(widget, lr, [ref], tiny_checkpoint, monkeypatch)
    assert widget.search.value == "exact"  # the default
    assert dict((value, label) for label, value in _widget.SEARCH_CHOICES)["coarse"].startswith("coarse (approximate")
    widget.search.value = "coarse"
    widget.run_button.clicked()
    _wait_idle(qtbot, widget)
    assert errors == []
    model = napari_refsr.load_model(tiny_checkpoint, device="cpu")
    options = dict(spatial_axes=(0, 1), tile=32, device="cpu")
    coarse = napari_refsr.upscale_nd(model, lr.data, [ref.data], search="coarse", **options).image
    exact = napari_refsr.upscale_nd(model, lr.data, [ref.data], **options).image
    np.testing.assert_array_equal(viewer.layers["lr ×4"].data, coarse)
    assert not np.array_equal(coarse, exact)


def test_chosen_axes_and_channel_axis(make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch, errors):
    """(Y, C, X) data: Y and X chosen by the user, the middle axis used as colour channels."""
    viewer = make_napari_viewer()
    rng = np.random.default_rng(4)
    lr = viewer.add_image((rng.random((16, 3, 20)) * 255).astype(np.uint8), name="ycx",
                          scale=(0.5, 1.0, 0.25), axis_labels=("y", "c", "x"))
    ref = viewer.add_image((rng.random((24, 24, 3)) * 255).astype(np.uint8), name="ref", rgb=True)
    widget = _widget_for(viewer)
    _setup(widget, lr, [ref], tiny_checkpoint, monkeypatch)
    assert widget.y_axis.enabled
    widget.y_axis.value, widget.x_axis.value, widget.channel_axis.value = 0, 2, 1
    widget.add_confidence.value = widget.add_source.value = True

    widget.run_button.clicked()
    _wait_idle(qtbot, widget)
    assert errors == []
    out = viewer.layers["ycx ×4"]
    assert out.data.shape == (64, 3, 80) and out.data.dtype == np.uint8
    np.testing.assert_allclose(out.scale, [0.125, 1.0, 0.0625])
    np.testing.assert_allclose(out.translate, [-0.25 + 0.0625, 0.0, -0.125 + 0.03125])
    conf = viewer.layers["ycx ×4 confidence"]  # no channel axis
    assert conf.data.shape == (64, 80) and tuple(conf.axis_labels) == ("y", "x")
    np.testing.assert_allclose(conf.scale, [0.125, 0.0625])
    src = viewer.layers["ycx source reference"]
    assert src.data.shape == (16, 20)
    np.testing.assert_allclose(src.scale, [0.5, 0.25])


def test_widget_runs_an_srntt_export(make_napari_viewer, qtbot, tmp_path, monkeypatch, errors):
    """SRNTT, the second architecture, chosen by its export file: the same widget, the ×4 layer."""
    from skimage import data

    import napari_refsr as rs
    from napari_refsr.archs.srntt import SRNTT, SRNTTConfig

    torch.manual_seed(5)
    net = SRNTT(SRNTTConfig(n_feats=8, content_blocks=1, transfer_blocks=(1, 1, 1)))
    with torch.no_grad():  # some texture influence, so the output is not just the bilinear skip
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.03)
    export = weights.save_checkpoint(tmp_path / "srntt-tiny.pt", net.state_dict(), net.config.to_dict())

    viewer = make_napari_viewer()
    astronaut = data.astronaut()
    lr_data = np.ascontiguousarray(astronaut[100:300:8, 150:310:8])  # 25×20 RGB
    ref_data = np.ascontiguousarray(astronaut[250:330, 200:300])
    lr = viewer.add_image(lr_data, name="astro", rgb=True)
    ref = viewer.add_image(ref_data, name="ref", rgb=True)
    widget = _widget_for(viewer)
    _setup(widget, lr, [ref], export, monkeypatch)
    widget.add_confidence.value = True

    widget.run_button.clicked()
    _wait_idle(qtbot, widget)
    assert errors == []
    out = viewer.layers["astro ×4"]
    assert out.rgb and out.data.shape == (100, 80, 3) and out.data.dtype == np.uint8
    model = rs.load_model(export, device="cpu", cache=False)
    assert model.arch == "srntt" and out.metadata["refsr"]["model"] == model.name
    expected = rs.upscale_nd(model, lr_data, [ref_data], spatial_axes=(0, 1), channel_axis=2, tile=32)
    np.testing.assert_array_equal(out.data, expected.image)  # the core's SRNTT result, unchanged
    bilinear = np.asarray(torch.nn.functional.interpolate(
        torch.from_numpy(lr_data).permute(2, 0, 1)[None].float(), scale_factor=4, mode="bilinear")[0].permute(1, 2, 0))
    assert np.abs(out.data.astype(float) - bilinear).mean() > 1.0  # the texture branch contributes
    conf = viewer.layers["astro ×4 confidence"]
    assert conf.data.shape == (100, 80) and 0 <= conf.data.min() and conf.data.max() <= 1 + 1e-4


# --------------------------------------------------------------------------- samples, models, writer


@pytest.mark.parametrize("key, prefix, widget_first", [("cell", "cell", False), ("stereo", "motorcycle", True)])
def test_sample_data_opens_and_preselects(make_napari_viewer, monkeypatch, key, prefix, widget_first):
    def offline(*_args, **_kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", offline)  # the images ship inside scikit-image
    viewer = make_napari_viewer()
    if widget_first:  # an empty viewer: the sample's first layer (the reference) becomes the image at first
        widget = _widget_for(viewer)
    else:
        viewer.add_image(np.zeros((32, 32), np.uint8), name="unrelated")
    viewer.open_sample(PLUGIN, key)
    lr = viewer.layers[f"{prefix} low-res"]
    ref = viewer.layers[f"{prefix} reference"]
    original = viewer.layers[f"{prefix} original (for comparison)"]
    assert lr.data.dtype == np.uint8 and lr.data.shape[0] * 4 == original.data.shape[0]
    assert lr.data.shape[1] * 4 == original.data.shape[1] and min(ref.data.shape[:2]) >= 256
    # the LR pixels cover exactly the original's area
    h, w = lr.data.shape[:2]
    np.testing.assert_allclose(lr.data_to_world((-0.5, -0.5)), original.data_to_world((-0.5, -0.5)))
    np.testing.assert_allclose(lr.data_to_world((h - 0.5, w - 0.5)),
                               original.data_to_world((4 * h - 0.5, 4 * w - 0.5)))
    # it is the original, shrunk (close to a block mean of the original)
    block = original.data.reshape(h, 4, w, 4, *original.data.shape[2:]).mean(axis=(1, 3))
    assert np.abs(block - lr.data).mean() < 8
    if not widget_first:
        widget = _widget_for(viewer)
    assert widget.image.value is lr and widget.references.value == [ref]


def test_shipped_default_model_runs_offline(make_napari_viewer, qtbot, monkeypatch, tmp_path, errors,
                                            held_out_pairs):
    """A fresh install with no network: add a low-res image and a reference, press Run with the
    preselected default model; the result is closer to the original than bicubic, and nothing
    was downloaded."""
    from skimage.metrics import peak_signal_noise_ratio

    from napari_refsr.resize import resize_uint8

    def offline(*_args, **_kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "empty-cache"))
    original, reference = held_out_pairs["motorcycle"]
    viewer = make_napari_viewer()
    lr = viewer.add_image(resize_uint8(original, (48, 48)), name="lr", rgb=True)
    ref = viewer.add_image(reference, name="ref", rgb=True)
    widget = _widget_for(viewer)
    assert widget.model.value == napari_refsr.DEFAULT_MODEL
    widget.image.value, widget.references.value, widget.device.value = lr, [ref], "cpu"
    widget.run_button.clicked()
    _wait_idle(qtbot, widget)
    assert errors == []
    out = viewer.layers["lr ×4"].data
    bicubic = resize_uint8(lr.data, (192, 192))
    assert out.shape == original.shape and out.dtype == np.uint8
    gain = peak_signal_noise_ratio(original, out) - peak_signal_noise_ratio(original, bicubic)
    assert gain > 0.4, f"{gain:+.2f} dB over bicubic"
    assert not (tmp_path / "empty-cache").exists()


def test_models_folder_checkpoints_are_listed(make_napari_viewer, tmp_path, tiny_checkpoint, monkeypatch):
    run = tmp_path / "runs" / "mine"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(tiny_checkpoint.read_bytes())
    (run / "notes.txt").write_text("not a model")
    monkeypatch.setenv(weights.MODELS_ENV, str(tmp_path / "runs"))
    assert weights.find_checkpoints() == [run / "model.pt"]
    widget = _widget_for(make_napari_viewer())
    values = list(widget.model.choices)
    assert str(run / "model.pt") in values and values[-1] == _widget.BROWSE
    assert "vgg19" not in values and "ttsr-rec" in values


def test_writer_saves_tiff_with_pixel_size(tmp_path):
    import tifffile

    from napari_refsr.imageio import read_image_with_meta

    layer = Image(np.arange(2 * 8 * 12, dtype=np.uint16).reshape(2, 8, 12), scale=(1.0, 0.125, 0.25),
                  units=("um", "um", "um"), axis_labels=("z", "y", "x"))
    paths = napari.save_layers(str(tmp_path / "out.tif"), [layer], plugin=PLUGIN)
    assert paths == [str(tmp_path / "out.tif")]
    data, meta = read_image_with_meta(paths[0])
    np.testing.assert_array_equal(data, layer.data)
    assert meta["axes"] == "ZYX" and meta["resolution_unit"] == 3  # centimetres
    np.testing.assert_allclose(meta["resolution"], (1e4 / 0.25, 1e4 / 0.125))  # pixels per cm (x, y)
    with tifffile.TiffFile(paths[0]) as tif:
        assert tif.pages[0].tags["XResolution"].value[0] / tif.pages[0].tags["XResolution"].value[1] == 40000

    rgb = Image(np.zeros((6, 6, 3), np.uint8), rgb=True, scale=(2.0, 2.0))  # pixels, no length unit
    path = napari.save_layers(str(tmp_path / "rgb.tiff"), [rgb], plugin=PLUGIN)[0]
    data, meta = read_image_with_meta(path)
    assert data.shape == (6, 6, 3) and meta["resolution"] == (0.5, 0.5) and meta["resolution_unit"] == 1


def test_placement_matches_pixel_footprints():
    layer = Image(np.zeros((5, 7)), scale=(0.3, 0.7), translate=(2.0, -1.0), rotate=20, shear=[0.4])
    from napari.utils.transforms import CompositeAffine

    linear = CompositeAffine(ndim=2, rotate=layer.rotate, shear=layer.shear).linear_matrix
    scale, translate = placement(layer.scale, layer.translate, (0, 1), 4, linear)
    out = Image(np.zeros((20, 28)), scale=scale, translate=translate, rotate=layer.rotate, shear=layer.shear)
    for point in ((-0.5, -0.5), (4.5, 6.5), (1.0, 2.0)):  # edges and a pixel centre
        fine = tuple(4 * c + 1.5 for c in point)
        np.testing.assert_allclose(out.data_to_world(fine), layer.data_to_world(point), atol=1e-9)
    assert _sample_data.downscale(np.full((8, 8), 200, np.uint8)).tolist() == [[200, 200], [200, 200]]


# --------------------------------------------------------------------------- out of core (dask, multiscale)


def test_dask_layer_runs_out_of_core_into_a_lazy_multiscale_layer(make_napari_viewer, qtbot, tiny_checkpoint,
                                                                  monkeypatch, errors, tmp_path):
    da = pytest.importorskip("dask.array")
    pytest.importorskip("ome_zarr")
    viewer = make_napari_viewer()
    rng = np.random.default_rng(5)
    image = (rng.random((77, 80)) * 50000 + 1000).astype(np.uint16)
    lr = viewer.add_image(da.from_array(image, chunks=(32, 32)), name="big", scale=(0.5, 0.25),
                          translate=(10.0, -3.0), contrast_limits=(1000, 40000))
    ref = viewer.add_image((rng.random((32, 36)) * 60000).astype(np.uint16), name="ref")
    widget = _widget_for(viewer)
    _setup(widget, lr, [ref], tiny_checkpoint, monkeypatch)
    monkeypatch.setattr(_large, "CHUNK", 40)  # 2×2 chunks (40 + 37 by 40 + 40 LR pixels; halo 37)
    store = tmp_path / "result.ome.zarr"
    widget.store.value = str(store)
    seen = []
    widget.relay.progress.connect(lambda d, t, m: seen.append((d, t, m)), Qt.ConnectionType.DirectConnection)

    widget.run_button.clicked()
    _wait_idle(qtbot, widget)
    assert errors == []
    assert (4, 4, "chunk 4 of 4") in seen
    out = viewer.layers["big ×4"]
    assert out.multiscale and store.is_dir() and str(store) in widget.status.value
    assert [tuple(level.shape) for level in out.data] == [(308, 320), (154, 160)]
    assert type(out.data[0]).__module__.startswith("dask")  # lazy: read from the store when shown
    expected = napari_refsr.upscale_nd(napari_refsr.load_model(tiny_checkpoint, device="cpu"), image,
                                       np.asarray(ref.data), tile=32).image
    np.testing.assert_array_equal(np.asarray(out.data[0]), expected)
    assert _store_scale(store) == pytest.approx([0.125, 0.0625])  # the store keeps the pixel size ÷ 4
    lo_in, hi_in = _footprint(lr, (-0.5, -0.5), (76.5, 79.5))
    lo_out, hi_out = _footprint(out, (-0.5, -0.5), (307.5, 319.5))
    np.testing.assert_allclose(lo_out, lo_in, atol=1e-9)
    np.testing.assert_allclose(hi_out, hi_in, atol=1e-9)


def _store_scale(store):
    """Level 0's pixel size in an OME-Zarr store."""
    from napari_refsr import large

    return large.open_levels(store)[2][0]


def test_multiscale_layer_cancel_between_chunks_leaves_no_store(make_napari_viewer, qtbot, tiny_checkpoint,
                                                                monkeypatch, errors, tmp_path):
    pytest.importorskip("ome_zarr")
    viewer = make_napari_viewer()
    rng = np.random.default_rng(6)
    base = (rng.random((77, 80, 3)) * 255).astype(np.uint8)
    lr = viewer.add_image([base, base[::2, ::2]], name="pyramid", rgb=True, multiscale=True)
    ref = viewer.add_image((rng.random((32, 36, 3)) * 255).astype(np.uint8), name="ref", rgb=True)
    widget = _widget_for(viewer)
    _setup(widget, lr, [ref], tiny_checkpoint, monkeypatch)
    monkeypatch.setattr(_large, "CHUNK", 40)
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(folder))  # the store it names goes here
    first, go, seen = _hold_after_first_step(widget)
    n_before = len(viewer.layers)
    widget.run_button.clicked()
    qtbot.waitUntil(first.is_set, timeout=300_000)
    widget.cancel_button.clicked()
    go.set()
    _wait_idle(qtbot, widget)
    assert seen == [(1, 4)] and widget.status.value == "cancelled" and errors == []
    assert len(viewer.layers) == n_before
    assert list(folder.iterdir()) == []  # neither the named store nor its temporary parts


def test_reader_opens_an_ome_zarr_lazily(make_napari_viewer, tmp_path):
    da = pytest.importorskip("dask.array")
    pytest.importorskip("ome_zarr")
    from napari_refsr import large

    rgb = (np.random.default_rng(7).random((3, 300, 260)) * 255).astype(np.uint8)
    large.write_ome_zarr(da.from_array(rgb, chunks=(3, 128, 128)), tmp_path / "rgb.ome.zarr", "CYX",
                         scale={"Y": 0.5, "X": 0.25}, units={"Y": "micrometer", "X": "micrometer"})
    gray = da.from_array(rgb[:2], chunks=(1, 128, 128))
    large.write_ome_zarr(gray, tmp_path / "zstack.ome.zarr", "ZYX", scale={"Z": 2.0, "Y": 0.5, "X": 0.5})
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "rgb.ome.zarr"), plugin=PLUGIN)
    assert layer.multiscale and layer.rgb and [tuple(s) for s in layer.data.shapes] == [(300, 260, 3), (150, 130, 3)]
    assert type(layer.data[0]).__module__.startswith("dask")  # nothing read until shown
    np.testing.assert_allclose(layer.scale, [0.5, 0.25])
    np.testing.assert_array_equal(np.asarray(layer.data[0]), np.moveaxis(rgb, 0, -1))
    [stack] = viewer.open(str(tmp_path / "zstack.ome.zarr"), plugin=PLUGIN)
    assert stack.multiscale and not stack.rgb and stack.data.shape == (2, 300, 260)
    np.testing.assert_allclose(stack.scale, [2.0, 0.5, 0.5])
    assert tuple(stack.axis_labels) == ("z", "y", "x")

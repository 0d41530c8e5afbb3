"""bioimage.io packages: export, validation and bioimageio.core's test, consumer prediction equal
to napari-refsr's, the round trip through load_model, and the errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
import yaml

import napari_refsr
from napari_refsr import zoo
from napari_refsr.errors import RefSRError, WeightsError

pytest.importorskip("bioimageio.spec")
pytest.importorskip("bioimageio.core")

# an import hook that hides packages from a child interpreter
_BLOCK = textwrap.dedent("""
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ImportError("blocked for this test: " + name)
    sys.meta_path.insert(0, _Block())
""")


def _run_blocked(blocked: set[str], code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK.format(blocked=blocked) + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    """A tiny TTSR (fixed seed) and its RGB package, with small test tensors (fast CI)."""
    from conftest import tiny_network

    folder = tmp_path_factory.mktemp("zoo")
    ckpt = folder / "tiny.pt"
    torch.save(tiny_network(3).state_dict(), ckpt)
    lr, ref, _ = zoo.default_test_images(3)
    package = zoo.export_bioimageio(ckpt, folder / "tiny.zip", name="tiny test model", authors=["Test Author"],
                                    test_images=(lr[:48, :48], ref[:64, :64]))
    return ckpt, package


def test_architecture_source_runs_without_napari_refsr(tmp_path):
    """The generated file defines the network on its own (torch + numpy only) and computes what
    the package's own TwoInputSR computes."""
    from conftest import tiny_network

    from napari_refsr.archs.srntt import SRNTT, SRNTTConfig
    from napari_refsr.archs.ttsr import TTSR, TTSRConfig
    from napari_refsr.archs.two_input import TwoInputSR
    from napari_refsr.zoo_source import architecture_source

    srntt_source = architecture_source(SRNTT, SRNTTConfig)  # the SRNTT closure assembles too
    assert "class SRNTT(" in srntt_source and "class LTE(" in srntt_source
    net = tiny_network(1)
    (tmp_path / "arch.py").write_text(architecture_source(TTSR, TTSRConfig))
    torch.save(TwoInputSR(net).state_dict(), tmp_path / "w.pt")
    g = torch.Generator().manual_seed(0)
    lr, ref = torch.rand(1, 3, 16, 20, generator=g), torch.rand(1, 3, 40, 44, generator=g)
    torch.save({"lr": lr, "ref": ref}, tmp_path / "x.pt")
    with torch.no_grad():
        expected = TwoInputSR(net)(lr, ref)
    torch.save(expected, tmp_path / "y.pt")
    res = _run_blocked({"napari_refsr", "skimage", "napari"}, f"""
        import importlib.util, torch
        spec = importlib.util.spec_from_file_location("arch", {str(tmp_path / 'arch.py')!r})
        m = importlib.util.module_from_spec(spec); sys.modules["arch"] = m; spec.loader.exec_module(m)
        net = m.refsr_network(dict(n_feats=8, num_res_blocks=[1, 1, 1, 1]), 3).eval()
        net.load_state_dict(torch.load({str(tmp_path / 'w.pt')!r}, weights_only=True))
        x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)
        with torch.no_grad():
            out = net(x["lr"], x["ref"])
        print("maxdiff", float((out - torch.load({str(tmp_path / 'y.pt')!r})).abs().max()))
    """)
    assert res.returncode == 0, res.stderr[-2000:]
    # the same operations in another process: equal up to float32 rounding (thread counts may differ)
    assert float(res.stdout.split("maxdiff")[1]) < 1e-6


def test_package_validates_and_passes_bioimageio_core_test(tiny_package):
    from bioimageio.core import test_model
    from bioimageio.spec import load_description

    _, package = tiny_package
    descr = load_description(package)
    assert descr.validation_summary.status == "valid-format", descr.validation_summary.format()
    assert [t.id for t in descr.inputs] == ["lr", "reference"]
    out_y = descr.outputs[0].axes[2]
    assert (out_y.size.tensor_id, out_y.scale, out_y.halo) == ("lr", 0.25, zoo.HALO * 4)
    assert descr.license == "MIT" and len(descr.cite) == 2 and descr.covers
    assert descr.weights.pytorch_state_dict is not None and descr.weights.torchscript is not None
    assert descr.weights.torchscript.parent == "pytorch_state_dict"
    for weight_format in ("pytorch_state_dict", "torchscript"):
        summary = test_model(package, weight_format=weight_format)
        assert summary.status == "passed", summary.format()
        names = [d.name for d in summary.details if d.status == "passed"]
        assert any("Reproduce test outputs" in n for n in names), weight_format
        assert sum("inference for inputs" in n for n in names) == 6, weight_format  # batch 1, 2 × n = 0, 1, 2


def test_torchscript_weights_run_without_python_sources(tiny_package, tmp_path):
    """The package's TorchScript file runs with torch alone (no napari-refsr, no architecture
    source) at sizes and a batch it was not traced with, and computes the state-dict network's output."""
    from conftest import tiny_network

    from napari_refsr.archs.two_input import TwoInputSR

    _, package = tiny_package
    (tmp_path / "ts.pt").write_bytes(zipfile.ZipFile(package).read("weights_torchscript.pt"))
    g = torch.Generator().manual_seed(1)
    lr, ref = torch.rand(2, 3, 28, 44, generator=g), torch.rand(2, 3, 70, 58, generator=g)
    torch.save({"lr": lr, "ref": ref}, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(TwoInputSR(tiny_network(3)).eval()(lr, ref), tmp_path / "y.pt")
    res = _run_blocked({"napari_refsr", "skimage", "napari", "bioimageio"}, f"""
        import torch
        net = torch.jit.load({str(tmp_path / 'ts.pt')!r})
        x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)
        with torch.no_grad():
            out = net(x["lr"], x["ref"])
        print("shape", tuple(out.shape), "maxdiff", float((out - torch.load({str(tmp_path / 'y.pt')!r})).abs().max()))
    """)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "shape (2, 3, 112, 176)" in res.stdout
    assert float(res.stdout.split("maxdiff")[1]) < 1e-5


def test_consumer_prediction_equals_napari_refsr(tiny_package, held_out_pairs):
    """bioimageio.core's prediction on new images (not the test tensors, another valid size, float
    intensities) is napari-refsr's result in the LR's [0, 1] window; with the halo padding a
    consumer applies, the interior still agrees."""
    from bioimageio.core import create_prediction_pipeline, predict
    from bioimageio.core.sample import Sample
    from bioimageio.core.tensor import Tensor
    from bioimageio.spec import load_description

    from napari_refsr.normalize import intensity_window

    ckpt, package = tiny_package
    hr, ref = held_out_pairs["ihc"]
    lr, ref = hr[:48, :64].astype(np.float32) * 7 + 30, ref[:80, :96].astype(np.float32) * 7 + 30
    ours = napari_refsr.upscale(napari_refsr.load_model(ckpt, device="cpu"), lr, ref, tile=64, device="cpu")
    lo, hi = intensity_window(lr)
    expected = (ours - lo) / (hi - lo)

    def sample():
        dims = ("batch", "channel", "y", "x")
        return Sample(members={"lr": Tensor(np.moveaxis(lr, -1, 0)[None], dims=dims),
                               "reference": Tensor(np.moveaxis(ref, -1, 0)[None], dims=dims)}, stat={}, id="new")

    descr = load_description(package)
    with create_prediction_pipeline(descr) as pipeline:
        out = pipeline.predict_sample_without_blocking(sample(), skip_input_padding=True, skip_output_cropping=True)
    got = np.moveaxis(out.members["sr"].data.to_numpy()[0], 0, -1)
    assert got.shape == expected.shape == (192, 256, 3)
    diff = np.abs(got - expected)
    # equal up to float order, except where two reference patches nearly tie in the search
    assert np.mean(diff > 1e-4) < 0.005 and diff.max() < 0.01
    padded = np.moveaxis(predict(model=descr, inputs=sample()).members["sr"].data.to_numpy()[0], 0, -1)
    inner = np.abs(padded - expected)[zoo.HALO * 4:-zoo.HALO * 4, zoo.HALO * 4:-zoo.HALO * 4]
    # bioimageio.core pads by the halo before normalising, which moves the percentiles a little
    assert padded.shape == expected.shape and inner.max() < 0.02


def test_round_trip_through_load_model(tiny_package, held_out_pairs):
    ckpt, package = tiny_package
    hr, ref = held_out_pairs["motorcycle"]
    lr = hr[::4, ::4]
    original = napari_refsr.load_model(ckpt, device="cpu", cache=False)
    loaded = napari_refsr.load_model(package, device="cpu", cache=False)
    assert loaded.config == original.config and loaded.meta["bioimageio_name"] == "tiny test model"
    np.testing.assert_array_equal(napari_refsr.upscale(loaded, lr, ref), napari_refsr.upscale(original, lr, ref))
    # the core opens packages without bioimageio installed
    res = _run_blocked({"bioimageio"}, f"""
        import numpy as np, napari_refsr
        m = napari_refsr.load_model({str(package)!r}, device="cpu")
        print(m.config["n_feats"])
    """)
    assert res.returncode == 0 and res.stdout.strip() == "8", res.stderr[-2000:]


def test_cli_grayscale_export(tmp_path, tiny_checkpoint):
    from bioimageio.spec import load_description

    from napari_refsr.cli import main

    out = tmp_path / "gray.zip"
    assert main(["export-bioimageio", str(tiny_checkpoint), "-o", str(out), "--channels", "1",
                 "--licence", "Apache-2.0", "--author", "A. Person"]) == 0
    descr = load_description(out)
    assert descr.validation_summary.status == "valid-format", descr.validation_summary.format()
    assert [str(c) for c in descr.inputs[0].axes[1].channel_names] == ["gray"]
    assert descr.license == "Apache-2.0" and descr.authors[0].name == "A. Person"
    test = np.load(zipfile.ZipFile(out).open("test_lr.npy"))
    assert test.shape == (1, 1, 64, 64) and test.dtype == np.float32  # the default test image


def test_errors(tmp_path, tiny_checkpoint, tiny_package, monkeypatch, capsys):
    from napari_refsr.cli import main

    with pytest.raises(RefSRError, match=r"\.zip"):
        zoo.export_bioimageio(tiny_checkpoint, tmp_path / "x.tar")
    with pytest.raises(RefSRError, match="channel"):
        zoo.export_bioimageio(tiny_checkpoint, tmp_path / "x.zip", channels=3,
                              test_images=(np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32)))
    with pytest.raises(RefSRError, match="smaller than the package's minimum"):
        zoo.export_bioimageio(tiny_checkpoint, tmp_path / "x.zip", channels=1,
                              test_images=(np.zeros((16, 64), np.float32), np.zeros((64, 64), np.float32)))
    assert not (tmp_path / "x.zip").exists()
    assert main(["export-bioimageio", str(tiny_checkpoint), "-o", str(tmp_path / "y.zip"), "--test-image", "a.png"]) == 2
    assert "together" in capsys.readouterr().err
    # a package napari-refsr did not write, and a damaged one: one-line WeightsError
    _, package = tiny_package
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(foreign, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "rdf.yaml":
                rdf = yaml.safe_load(data)
                rdf["weights"]["pytorch_state_dict"]["architecture"]["callable"] = "UNet"
                data = yaml.safe_dump(rdf).encode()
            dst.writestr(item, data)
    with pytest.raises(WeightsError, match="not exported by napari-refsr"):
        napari_refsr.load_model(foreign, cache=False)
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.namelist():
            if item != "weights.pt":
                dst.writestr(item, src.read(item))
    with pytest.raises(WeightsError, match="not a readable bioimage.io package"):
        napari_refsr.load_model(broken, cache=False)
    # without bioimageio.spec the export says what to install
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)
    with pytest.raises(RefSRError, match=r"napari-refsr\[bioimageio\]"):
        zoo.export_bioimageio(tiny_checkpoint, tmp_path / "z.zip")

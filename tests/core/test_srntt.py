"""SRNTT: the swap against a loop-based implementation of the paper's equations, the network's
interface and gradients, loading an export through the core, the pipeline, the CLI, and the
converter for the public PyTorch port's checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import napari_refsr as rs
from napari_refsr import imageio, search, weights
from napari_refsr.archs.srntt import SRNTT, SRNTTConfig, SRNTTOutput
from napari_refsr.archs.srntt_convert import convert_srntt_pytorch
from napari_refsr.archs.ttsr import ReferenceBank
from napari_refsr.errors import RefSRError, WeightsError

TINY = dict(n_feats=8, content_blocks=1, transfer_blocks=(1, 1, 1))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids oversubscribing the shared CPU cores (10× faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_srntt(seed: int = 0, **overrides) -> SRNTT:
    torch.manual_seed(seed)
    return SRNTT(SRNTTConfig(**{**TINY, **overrides})).eval()


# --------------------------------------------------------------------------- the paper's equations, by loops


def _patch(fm: torch.Tensor, y: int, x: int, scale: int) -> torch.Tensor:
    """The (3·scale)² patch of position (y, x) of the key grid: top-left at ((y-1)·scale,
    (x-1)·scale) of ``fm``, zeros outside the map (the search's zero padding)."""
    c, hm, wm = fm.shape
    k = 3 * scale
    out = torch.zeros(c, k, k, dtype=torch.float64)
    for dy in range(k):
        for dx in range(k):
            yy, xx = (y - 1) * scale + dy, (x - 1) * scale + dx
            if 0 <= yy < hm and 0 <= xx < wm:
                out[:, dy, dx] = fm[:, yy, xx].double()
    return out


def loop_swap(query, keys, levels):
    """s_ij = <P_i(φ(LR↑)), P_j(φ(Ref↓↑)) / ‖P_j(φ(Ref↓↑))‖>, j* = argmax_j s_ij; M_l places
    P_j*(φ_l(Ref)) at every position i and divides by the number of patches covering a pixel.

    ``levels`` maps scale (1, 2, 4) → the reference value maps at that scale. Returns
    (index, cosine similarity s_ij* / ‖P_i‖, {scale: M}).
    """
    _, h, w = query.shape
    key_list = [(r, y, x) for r, k in enumerate(keys) for y in range(k.shape[1]) for x in range(k.shape[2])]
    index = torch.zeros(h, w, dtype=torch.long)
    cosine = torch.zeros(h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            p_i = _patch(query, y, x, 1)
            scores = []
            for r, ky, kx in key_list:
                p_j = _patch(keys[r], ky, kx, 1)
                scores.append(float((p_i * p_j).sum() / p_j.norm()))
            j = int(np.argmax(scores))
            index[y, x] = j
            cosine[y, x] = scores[j] / p_i.norm()
    maps = {}
    for scale, values in levels.items():
        c = values[0].shape[0]
        acc = torch.zeros(c, h * scale, w * scale, dtype=torch.float64)
        count = torch.zeros(h * scale, w * scale, dtype=torch.float64)
        for y in range(h):
            for x in range(w):
                r, ky, kx = key_list[int(index[y, x])]
                patch = _patch(values[r], ky, kx, scale)
                for dy in range(3 * scale):
                    for dx in range(3 * scale):
                        oy, ox = (y - 1) * scale + dy, (x - 1) * scale + dx
                        if 0 <= oy < h * scale and 0 <= ox < w * scale:
                            acc[:, oy, ox] += patch[:, dy, dx]
                            count[oy, ox] += 1
        maps[scale] = (acc / count, acc / 9.0)
    return index, cosine, maps


def test_swap_equals_the_paper_equations_written_as_loops():
    torch.manual_seed(3)
    c3, c2, c1 = 6, 3, 2
    query = torch.rand(c3, 4, 5) ** 2  # non-negative, like ReLU features
    keys = [torch.rand(c3, 3, 4) ** 2, torch.rand(c3, 2, 3) ** 2]  # two references
    lv3 = [torch.rand(c3, k.shape[1], k.shape[2]) for k in keys]
    lv2 = [torch.rand(c2, 2 * k.shape[1], 2 * k.shape[2]) for k in keys]
    lv1 = [torch.rand(c1, 4 * k.shape[1], 4 * k.shape[2]) for k in keys]
    bank = ReferenceBank(keys, lv1, lv2, lv3)

    s, m3, m2, m1, index = tiny_srntt().swap(query, bank)
    exp_index, exp_cos, exp_maps = loop_swap(query, keys, {1: lv3, 2: lv2, 4: lv1})

    assert torch.equal(index, exp_index)
    assert (index >= 12).any() and (index < 12).any()  # matches come from both references
    torch.testing.assert_close(s[0].double(), exp_cos, atol=1e-5, rtol=1e-5)
    for got, scale in ((m3, 1), (m2, 2), (m1, 4)):
        torch.testing.assert_close(got.double(), exp_maps[scale][0], atol=1e-5, rtol=1e-5)
    # the default transfer (TTSR) is unchanged: the same sums divided by 9, not by the overlap count
    torch.testing.assert_close(search.transfer(index, lv2, 2).double(), exp_maps[2][1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(exp_maps[2][0], exp_maps[2][1])  # the border tells the two apart


# --------------------------------------------------------------------------- the network


def test_forward_shapes_and_interface():
    net = tiny_srntt()
    torch.manual_seed(1)
    lr = torch.rand(2, 3, 6, 7) * 2 - 1
    lr_up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic")
    ref1, ref2 = torch.rand(1, 3, 20, 24) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = net(lr, lr_up, [ref1, ref2], [ref1, ref2])
        banks = net.encode_references([ref1, ref2], [ref1, ref2])
        again = net.forward_bank(lr, lr_up, banks)
    assert isinstance(out, SRNTTOutput) and out[0] is out.sr
    assert out.sr.shape == (2, 3, 24, 28) and out.sr.min() >= -1 and out.sr.max() <= 1
    assert out.S.shape == (2, 1, 6, 7) and 0 <= out.S.min() and out.S.max() <= 1 + 1e-5
    assert out.M_lv3.shape == (2, 256, 6, 7)
    assert out.M_lv2.shape == (2, 128, 12, 14)
    assert out.M_lv1.shape == (2, 64, 24, 28)
    assert out.index.shape == (2, 6, 7) and out.index.max() < 5 * 6 + 4 * 4
    assert len(banks) == 1 and banks[0].shapes == [(5, 6), (4, 4)]
    for a, b in zip(out, again):
        assert torch.equal(a, b)
    with pytest.raises(RefSRError, match="LR↑"):
        net.forward_bank(lr, lr_up[..., :-4], banks)
    assert net.search_budget == search.DEFAULT_BUDGET


def test_similarity_weighting_changes_the_output():
    torch.manual_seed(2)
    lr = torch.rand(1, 3, 5, 5) * 2 - 1
    lr_up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic")
    ref = torch.rand(1, 3, 16, 16) * 2 - 1
    net = tiny_srntt()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        base = net(lr, lr_up, ref, ref).sr
        net.weight_bias.fill_(-30.0)  # sigmoid ≈ 0: M switched off
        off = net(lr, lr_up, ref, ref)
        m_zero = net.synthesize(lr, off.S, *(torch.zeros_like(m) for m in off[2:5]))
    assert not torch.allclose(base, off.sr, atol=1e-4)
    torch.testing.assert_close(off.sr, m_zero, atol=1e-6, rtol=0)
    assert "weight_scale" not in dict(tiny_srntt(use_weights=False).named_parameters())


def test_gradients_reach_trainable_parts_but_not_the_frozen_vgg():
    net = tiny_srntt().train()
    net.requires_grad_(True)  # even a trainer that unfreezes everything cannot train the VGG
    net.vgg.requires_grad_(False)
    torch.manual_seed(4)
    lr = torch.rand(1, 3, 6, 6) * 2 - 1
    lr_up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic")
    ref = torch.rand(1, 3, 16, 20) * 2 - 1
    out = net(lr, lr_up, ref, ref)
    (out.sr.square().mean()).backward()
    trainable = {n: p for n, p in net.named_parameters() if not n.startswith("vgg.")}
    assert "weight_scale" in trainable and "stages.2.blocks.0.conv1.weight" in trainable
    for name, p in trainable.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in net.vgg.named_parameters():
        assert p.grad is None and not p.requires_grad, name
    assert not SRNTT(SRNTTConfig(**TINY)).vgg.slice1[0].weight.requires_grad  # frozen from the start


def test_config_validation():
    assert SRNTTConfig().to_dict() == {"n_feats": 64, "content_blocks": 16, "transfer_blocks": [16, 16, 16],
                                       "use_weights": True, "scale": 4, "arch": "srntt"}
    assert SRNTTConfig(transfer_blocks="16+8+4").transfer_blocks == (16, 8, 4)
    for bad in (dict(n_feats=7), dict(transfer_blocks=(1, 1)), dict(scale=2), dict(content_blocks=-1)):
        with pytest.raises(ValueError):
            SRNTTConfig(**bad)
    with pytest.raises(RefSRError, match="srntt"):
        rs.build_network({"arch": "srntt", "n_feats": 5})
    assert isinstance(rs.build_network({"arch": "srntt", **TINY}), SRNTT)


# --------------------------------------------------------------------------- through the core


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    net = tiny_srntt(seed=5)
    with torch.no_grad():  # some texture influence, so SRNTT is not just its bilinear skip
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.03)
    path = tmp_path_factory.mktemp("srntt") / "srntt-tiny.pt"
    weights.save_checkpoint(path, net.state_dict(), net.config.to_dict(), {"note": "test"})
    return path


def test_export_loads_with_load_model(export, tmp_path):
    ckpt = weights.read_checkpoint(export)
    assert ckpt.config["arch"] == "srntt" and ckpt.source_format == "refsr"
    model = rs.load_model(export, device="cpu", cache=False)
    assert model.arch == "srntt" and isinstance(model.network, SRNTT)
    assert model.network.config.transfer_blocks == (1, 1, 1)
    st = tmp_path / "srntt.safetensors"
    weights.save_checkpoint(st, model.network.state_dict(), model.config)
    st_model = rs.load_model(st, device="cpu", cache=False)
    for (k, a), (_, b) in zip(model.network.state_dict().items(), st_model.network.state_dict().items()):
        assert torch.equal(a, b), k
    wrong = tmp_path / "wrong.pt"
    weights.save_checkpoint(wrong, model.network.state_dict(), {**model.config, "content_blocks": 2})
    with pytest.raises(WeightsError, match="srntt"):
        rs.load_model(wrong, device="cpu", cache=False)


def test_pipeline_equals_a_direct_network_call(export, reference_test_inputs):
    """The reference procedure (PIL bicubic LR↑ and Ref↓↑, /127.5 − 1, round) through upscale()."""
    model = rs.load_model(export, device="cpu", cache=False)
    astronaut = data.astronaut()
    lr = np.ascontiguousarray(astronaut[::8, ::8][:24, :20])
    ref = astronaut[200:302, 210:311]  # 102×101: cropped to 100×100 inside
    inputs = reference_test_inputs(lr, ref)
    with torch.no_grad():
        sr = model.network(*inputs)[0]
    expected = np.round(((sr[0] + 1) * 127.5).permute(1, 2, 0).numpy()).astype(np.uint8)
    out = rs.upscale(model, lr, ref, tile=256, device="cpu")
    assert out.dtype == np.uint8 and out.shape == (96, 80, 3)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    bilinear = torch.nn.functional.interpolate(inputs[0], scale_factor=4, mode="bilinear")
    assert (sr - bilinear).abs().mean() > 1e-3  # the texture branch contributes


def test_pipeline_finds_each_patch_in_its_own_reference(export):
    """LR = Ref↓: LR↑ equals Ref↓↑, so every LR patch matches itself (cosine 1)."""
    model = rs.load_model(export, device="cpu", cache=False)
    rng = np.random.default_rng(7)
    ref = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    lr = np.array(Image.fromarray(ref).resize((10, 12), Image.BICUBIC))
    res = rs.upscale_detailed(model, lr, ref, tile=256, device="cpu")
    assert res.image.shape == (48, 40, 3) and res.confidence.shape == (48, 40)
    ys, xs = np.mgrid[0:12, 0:10]
    assert (res.source[..., 0] == 0).all()
    assert (res.source[..., 1] == ys * 4 + 2).all() and (res.source[..., 2] == xs * 4 + 2).all()
    assert np.abs(res.confidence - 1).max() < 1e-3


def test_cli_upscales_with_an_srntt_export(export, tmp_path):
    astronaut = data.astronaut()
    lr = np.ascontiguousarray(astronaut[100:300:8, 150:310:8])  # 25×20
    ref = astronaut[250:330, 200:300]
    imageio.write_image(tmp_path / "lr.png", lr)
    imageio.write_image(tmp_path / "ref.png", ref)
    out_path = tmp_path / "out.png"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_refsr", "upscale", str(tmp_path / "lr.png"), str(tmp_path / "ref.png"),
         "-o", str(out_path), "--model", str(export), "--device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    out = imageio.read_image(out_path)
    model = rs.load_model(export, device="cpu", cache=False)
    assert out.shape == (100, 80, 3)
    np.testing.assert_array_equal(out, rs.upscale(model, lr, ref, device="cpu"))


# --------------------------------------------------------------------------- the public port's checkpoints


def port_state_dict(ngf: int = 8, n_blocks: int = 1, use_weights: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under the key names and shapes of srntt-pytorch's ``SRNTT(ngf, n_blocks, use_weights)``."""
    g = torch.Generator().manual_seed(11)
    conv = lambda cout, cin: {"weight": torch.randn(cout, cin, 3, 3, generator=g) * 0.02,  # noqa: E731
                              "bias": torch.randn(cout, generator=g) * 0.01}
    layers = {"content_extractor.head.0": conv(ngf, 3)}
    for i in range(n_blocks):
        layers[f"content_extractor.body.{i}.body.0"] = conv(ngf, ngf)
        layers[f"content_extractor.body.{i}.body.2"] = conv(ngf, ngf)
    layers.update({"content_extractor.tail.0": conv(ngf * 4, ngf), "content_extractor.tail.3": conv(ngf * 4, ngf),
                   "content_extractor.tail.6": conv(ngf, ngf), "content_extractor.tail.8": conv(3, ngf)})
    for scale, channels in (("small", 256), ("medium", 128), ("large", 64)):
        layers[f"texture_transfer.head_{scale}.0"] = conv(ngf, ngf + channels)
        for i in range(n_blocks):
            layers[f"texture_transfer.body_{scale}.{i}.body.0"] = conv(ngf, ngf)
            layers[f"texture_transfer.body_{scale}.{i}.body.2"] = conv(ngf, ngf)
    layers.update({"texture_transfer.tail_small.0": conv(ngf * 4, ngf),
                   "texture_transfer.tail_medium.0": conv(ngf * 4, ngf),
                   "texture_transfer.tail_large.0": conv(ngf // 2, ngf),
                   "texture_transfer.tail_large.2": conv(3, ngf // 2)})
    sd = {f"{name}.{p}": t for name, params in layers.items() for p, t in params.items()}
    if use_weights:
        sd["texture_transfer.a"] = torch.rand(3, generator=g) + 0.5
        sd["texture_transfer.b"] = torch.rand(3, generator=g) - 0.5
    return sd


def vgg19_state() -> dict[str, torch.Tensor]:
    """A torchvision-VGG19-shaped state dict (random values) with the classifier it also holds."""
    g = torch.Generator().manual_seed(12)
    sd = {}
    for i, (cin, cout) in {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256),
                           12: (256, 256)}.items():
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.01
    sd["classifier.6.weight"] = torch.zeros(10, 4)
    return sd


def test_convert_port_checkpoint_puts_each_tensor_in_place():
    port, vgg = port_state_dict(n_blocks=2), vgg19_state()
    sd, config = convert_srntt_pytorch({f"module.{k}": v for k, v in port.items()}, vgg)
    assert config == {"n_feats": 8, "content_blocks": 2, "transfer_blocks": [2, 2, 2], "use_weights": True,
                      "scale": 4, "arch": "srntt"}
    pairs = {"content.head.weight": "content_extractor.head.0.weight",
             "content.blocks.1.conv2.bias": "content_extractor.body.1.body.2.bias",
             "stages.0.head.weight": "texture_transfer.head_small.0.weight",
             "stages.1.blocks.1.conv1.weight": "texture_transfer.body_medium.1.body.0.weight",
             "stages.2.blocks.0.conv2.weight": "texture_transfer.body_large.0.body.2.weight",
             "stages.1.up.bias": "texture_transfer.tail_medium.0.bias",
             "tail1.weight": "texture_transfer.tail_large.0.weight",
             "tail2.bias": "texture_transfer.tail_large.2.bias",
             "weight_scale": "texture_transfer.a", "weight_bias": "texture_transfer.b"}
    for ours, theirs in pairs.items():
        assert torch.equal(sd[ours], port[theirs]), ours
    for i, slice_ in ((0, 1), (2, 2), (5, 2), (7, 3), (10, 3)):
        assert torch.equal(sd[f"vgg.slice{slice_}.{i}.weight"], vgg[f"features.{i}.weight"])
    assert not any("tail.8" in k or k.startswith("content_extractor") for k in sd)
    net = SRNTT(SRNTTConfig(**config))
    net.load_state_dict(sd, strict=True)

    no_weights = convert_srntt_pytorch(port_state_dict(use_weights=False), vgg)[1]
    assert no_weights["use_weights"] is False and no_weights["transfer_blocks"] == [1, 1, 1]


def test_convert_port_checkpoint_errors():
    port, vgg = port_state_dict(), vgg19_state()
    with pytest.raises(WeightsError, match="unrecognised keys MainNet"):
        convert_srntt_pytorch({**port, "MainNet.x.weight": torch.zeros(1)}, vgg)
    with pytest.raises(WeightsError, match="VGG19"):
        convert_srntt_pytorch(port, {k: v for k, v in vgg.items() if k != "features.10.weight"})
    bad = dict(port)
    bad["texture_transfer.head_small.0.weight"] = torch.zeros(8, 100, 3, 3)
    with pytest.raises(WeightsError, match="do not fit"):
        convert_srntt_pytorch(bad, vgg)


def test_converted_file_loads_and_upscales(tmp_path):
    src, vgg = tmp_path / "netG_100.pth", tmp_path / "vgg19.pth"
    torch.save(port_state_dict(), src)
    torch.save(vgg19_state(), vgg)
    dst = weights.convert_srntt_pytorch_file(src, tmp_path / "srntt.safetensors", vgg=vgg)
    model = rs.load_model(dst, device="cpu", cache=False)
    assert model.arch == "srntt" and model.meta["converted_from"] == "netG_100.pth"
    torch.testing.assert_close(model.network.tail1.weight, port_state_dict()["texture_transfer.tail_large.0.weight"])
    rng = np.random.default_rng(1)
    out = rs.upscale(model, rng.integers(0, 256, (8, 9, 3), dtype=np.uint8),
                     rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), device="cpu")
    assert out.shape == (32, 36, 3) and out.dtype == np.uint8

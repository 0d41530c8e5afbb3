"""The TTSR network: the reference's call and shapes, batching, several references, the
published parameter layout, gradients through hard/soft attention, and VGG19 initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_refsr import search as ts
from napari_refsr.archs.ttsr import LTE, TTSR, TTSRConfig

SMALL = dict(n_feats=8, num_res_blocks=(1, 1, 1, 1))


def network(seed: int = 0) -> TTSR:
    torch.manual_seed(seed)
    return TTSR(TTSRConfig(**SMALL)).eval()


def image(n, h, w, seed):
    """A smooth random image in [-1, 1] (bilinear upsampled noise), NCHW."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(2, h // 4), max(2, w // 4), generator=g) * 2 - 1
    fine = 0.2 * (torch.rand(n, 3, h, w, generator=g) * 2 - 1)
    return (F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) + fine).clamp(-1, 1)


def inputs(n, h, w, ref_hw, seed):
    """(lr, lr↑, ref, ref↓↑) as the reference's data pipeline builds them, with bicubic resizes."""
    lr = image(n, h, w, seed)
    lr_up = F.interpolate(lr, scale_factor=4, mode="bicubic").clamp(-1, 1)
    ref = image(n, *ref_hw, seed + 1)
    ref_du = F.interpolate(F.interpolate(ref, scale_factor=0.25, mode="bicubic"), scale_factor=4,
                           mode="bicubic").clamp(-1, 1)
    return lr, lr_up, ref, ref_du


@torch.no_grad()
def test_forward_shapes_and_range():
    net = network()
    n, h, w = 2, 8, 10
    out = net(*inputs(n, h, w, (32, 36), seed=1))
    assert isinstance(out, tuple)
    sr, s, t3, t2, t1 = out[:5]
    assert sr.shape == (n, 3, 4 * h, 4 * w)
    assert sr.min() >= -1 and sr.max() <= 1
    assert s.shape == (n, 1, h, w)
    assert t3.shape == (n, 256, h, w)
    assert t2.shape == (n, 128, 2 * h, 2 * w)
    assert t1.shape == (n, 64, 4 * h, 4 * w)
    assert out.index.shape == (n, h, w)
    assert (out.index >= 0).all() and (out.index < 8 * 9).all()  # 32×36 reference → 8×9 keys
    assert torch.isfinite(sr).all() and torch.isfinite(s).all()
    assert (s <= 1 + 1e-5).all()  # cosine relevance


@torch.no_grad()
def test_batch_equals_each_sample_alone():
    net = network()
    lr, lr_up, ref, ref_du = inputs(2, 8, 8, (28, 32), seed=2)
    batched = net(lr, lr_up, ref, ref_du)
    for b in range(2):
        alone = net(lr[b : b + 1], lr_up[b : b + 1], ref[b : b + 1], ref_du[b : b + 1])
        assert torch.equal(batched.index[b], alone.index[0])
        for got, want in zip(batched[:5], alone[:5]):
            torch.testing.assert_close(got[b : b + 1], want, atol=1e-5, rtol=1e-4)
    # the two samples really had different references
    assert not torch.equal(batched.index[0], batched.index[1])


@torch.no_grad()
def test_shared_reference_batch_of_one():
    """A reference batch of 1 serves every sample, like passing it to each sample alone."""
    net = network()
    lr, lr_up, ref, ref_du = inputs(2, 8, 8, (24, 24), seed=3)
    shared = net(lr, lr_up, ref[:1], ref_du[:1])
    second = net(lr[1:], lr_up[1:], ref[:1], ref_du[:1])
    assert torch.equal(shared.index[1], second.index[0])
    torch.testing.assert_close(shared.sr[1:], second.sr, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_two_references_search_their_union():
    """With refs [A, B] every LR position takes the better of the two single-reference
    matches; B's indices are offset by A's key count."""
    net = network()
    lr, lr_up, ref_a, ref_a_du = inputs(1, 8, 8, (24, 28), seed=4)
    _, _, ref_b, ref_b_du = inputs(1, 8, 8, (32, 20), seed=40)
    only_a = net(lr, lr_up, ref_a, ref_a_du)
    only_b = net(lr, lr_up, ref_b, ref_b_du)
    both = net(lr, lr_up, [ref_a, ref_b], [ref_a_du, ref_b_du])
    n_a = (24 // 4) * (28 // 4)
    torch.testing.assert_close(both.S, torch.maximum(only_a.S, only_b.S), atol=1e-5, rtol=1e-5)
    sa, sb = only_a.S[:, 0], only_b.S[:, 0]
    a_wins, b_wins = sa > sb + 1e-4, sb > sa + 1e-4
    assert a_wins.any() and b_wins.any()  # both references contribute
    assert torch.equal(both.index[a_wins], only_a.index[a_wins])
    assert torch.equal(both.index[b_wins], only_b.index[b_wins] + n_a)
    # level-3 texture comes from the winning reference; a T pixel sums its 3×3 neighbours'
    # patches, so compare where the whole neighbourhood has the same clear winner
    def erode(m):  # True where m holds on every in-image 3×3 neighbour
        return -F.max_pool2d(-m[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0.5

    for wins, single in [(a_wins, only_a), (b_wins, only_b)]:
        region = erode(wins)[:, None].expand_as(single.T_lv3)
        assert region.any()
        torch.testing.assert_close(both.T_lv3[region], single.T_lv3[region], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
@torch.no_grad()
def test_copied_reference_is_found_in_the_right_reference(order):
    """When one reference is the LR↑ image itself, its patches win at its own positions
    (S = 1), whichever place it has in the reference list."""
    net = network()
    lr, lr_up, other, other_du = inputs(1, 8, 8, (28, 24), seed=5)
    pair = [(other, other_du), (lr_up, lr_up)]
    refs = [pair[i] for i in order]
    out = net(lr, lr_up, [r for r, _ in refs], [d for _, d in refs])
    shapes = [(r.shape[-2] // 4, r.shape[-1] // 4) for r, _ in refs]
    decoded = ts.decode_index(out.index[0], shapes)  # (8, 8, 3)
    own = order.index(1)  # where lr_up sits in the list
    inner = (slice(1, 7), slice(1, 7))
    assert (decoded[inner][..., 0] == own).all()
    ys, xs = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert (decoded[inner][..., 1] == ys[inner].numpy()).all()
    assert (decoded[inner][..., 2] == xs[inner].numpy()).all()
    torch.testing.assert_close(out.S[0, 0][inner], torch.ones(6, 6), atol=1e-5, rtol=0)


def test_default_config_matches_the_published_model():
    net = TTSR()
    assert sum(p.numel() for p in net.MainNet.parameters()) == 6_174_275
    assert sum(p.numel() for p in net.LTE.parameters()) == 555_340
    keys = list(net.state_dict())
    assert len(keys) == 316
    assert all(k.startswith(("MainNet.", "LTE.")) for k in keys)
    assert "LTE.slice3.10.weight" in keys and "MainNet.merge_tail.conv_tail2.bias" in keys
    assert net.state_dict()["MainNet.conv11_head.weight"].shape == (64, 256 + 64, 3, 3)


def test_gradients_reach_mainnet_and_lte_through_s_and_t():
    net = network().train()
    lr, lr_up, ref, ref_du = inputs(1, 8, 8, (24, 24), seed=6)
    out = net(lr, lr_up, ref, ref_du)
    assert out.S.requires_grad and out.T_lv3.requires_grad and out.T_lv1.requires_grad
    lte_params = [p for p in net.LTE.parameters() if p.requires_grad]
    # soft attention S: gradient reaches the LTE through the LR↑ query features
    g_s = torch.autograd.grad(out.S.sum(), lte_params, retain_graph=True, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in g_s)
    # hard attention T: gradient reaches the LTE through the reference's value features
    g_t = torch.autograd.grad(out.T_lv1.pow(2).sum(), lte_params[:2], retain_graph=True)
    assert all(g.abs().sum() > 0 for g in g_t)
    # the SR loss reaches every MainNet parameter and the LTE
    F.l1_loss(out.sr, torch.zeros_like(out.sr)).backward()
    main = dict(net.MainNet.named_parameters())
    missing = [name for name, p in main.items() if p.grad is None]
    assert not missing
    assert sum(bool(p.grad.abs().sum() > 0) for p in main.values()) >= 0.9 * len(main)
    assert net.MainNet.conv11_head.weight.grad[:, 8:].abs().sum() > 0  # the T_lv3 input channels
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lte_params)
    assert net.LTE.sub_mean.weight.grad is None  # the fixed ImageNet normalisation


def test_eval_search_matches_train_relevance():
    """Training recomputes S differentiably; it equals the no-grad search's S."""
    net = network()
    args = inputs(1, 8, 8, (24, 24), seed=7)
    with torch.no_grad():
        plain = net(*args)
    net.train()
    trained = net(*args)
    assert torch.equal(trained.index, plain.index)
    torch.testing.assert_close(trained.S.detach(), plain.S, atol=1e-5, rtol=1e-5)


def test_lte_load_vgg19_maps_features_keys():
    g = torch.Generator().manual_seed(8)
    vgg = {}
    shapes = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128),
              12: (256, 256), 14: (256, 256)}  # beyond relu3_1: ignored
    for idx, (cout, cin) in shapes.items():
        vgg[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g)
        vgg[f"features.{idx}.bias"] = torch.randn(cout, generator=g)
    vgg["classifier.0.weight"] = torch.randn(10, 10, generator=g)
    lte = LTE()
    sub_mean = {k: v.clone() for k, v in lte.sub_mean.state_dict().items()}
    lte.load_vgg19(vgg)
    state = lte.state_dict()
    for slice_name, idx in [("slice1", 0), ("slice2", 2), ("slice2", 5), ("slice3", 7), ("slice3", 10)]:
        assert torch.equal(state[f"{slice_name}.{idx}.weight"], vgg[f"features.{idx}.weight"])
        assert torch.equal(state[f"{slice_name}.{idx}.bias"], vgg[f"features.{idx}.bias"])
    for k, v in sub_mean.items():  # the ImageNet normalisation is not a VGG weight
        assert torch.equal(state[f"sub_mean.{k}"], v)
    # the loaded extractor computes VGG19's relu1_1 on ImageNet-normalised input
    x = torch.rand(1, 3, 8, 8, generator=g)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        lv1 = lte(x)[0]
        want = F.relu(F.conv2d((x - mean) / std, vgg["features.0.weight"], vgg["features.0.bias"], padding=1))
    torch.testing.assert_close(lv1, want, atol=1e-4, rtol=1e-4)


def test_global_skip_starts_at_bicubic_and_learns_a_residual():
    """global_skip=True (an option, off in the published model): output = clamp(residual + LR↑),
    the residual's last conv zero at init, so an untrained network returns exactly LR↑; the
    gradient reaches that conv at once and every layer after one optimiser step."""
    torch.manual_seed(0)
    net = TTSR(TTSRConfig(n_feats=8, num_res_blocks=(1, 1, 1, 1), global_skip=True))
    lr = torch.rand(1, 3, 6, 7) * 2 - 1
    lr_up = torch.rand(1, 3, 24, 28) * 1.8 - 0.9
    ref = torch.rand(1, 3, 16, 20) * 2 - 1
    hr = (lr_up + 0.1 * torch.randn_like(lr_up)).clamp(-1, 1)
    out = net(lr, lr_up, ref, ref)
    assert torch.equal(out.sr, lr_up)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    (out.sr - hr).abs().mean().backward()
    assert net.MainNet.merge_tail.conv_tail2.weight.grad.abs().sum() > 0
    opt.step()
    opt.zero_grad()
    out = net(lr, lr_up, ref, ref)
    assert (out.sr - lr_up).abs().max() > 0
    (out.sr - hr).abs().mean().backward()
    assert net.MainNet.SFE.conv_head.weight.grad.abs().sum() > 0  # the gradient reaches the start
    assert TTSRConfig().global_skip is False

"""Weights registry, download cache (against a real HTTP server on 127.0.0.1), checkpoint reading
in every supported format, the OpenMMLab key converter and atomic saving."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_refsr import weights
from napari_refsr.archs.ttsr import TTSR, TTSRConfig
from napari_refsr.archs.ttsr_convert import convert_mmagic
from napari_refsr.errors import RefSRError, WeightsError

CFG = TTSRConfig(n_feats=8, num_res_blocks=(1, 2, 1, 1))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No proxy for 127.0.0.1, no inherited cache/mirror settings."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(weights.BASE_URL_ENV, raising=False)
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "default-cache"))


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = TTSR(CFG)
    with torch.no_grad():  # make every tensor distinct from a fresh init
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def ckpt_bytes(tiny_state) -> bytes:
    buf = io.BytesIO()
    torch.save(tiny_state, buf)
    return buf.getvalue()


class Server:
    """A real HTTP server in a thread; ``files`` maps URL paths to bodies; ``requests`` counts."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                state.requests.append(self.path)
                body = state.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def dead_url(path: str) -> str:
    """A URL on a port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def register(monkeypatch, name: str, url: str | None, data: bytes | None, *, hash: str | None = None,
             filename: str = "tiny-ttsr.pt", packaged: str | None = None) -> weights.WeightSpec:
    spec = weights.WeightSpec(
        name=name, url=url, filename=filename, hash=hash or f"sha256:{sha256(data)}",
        format="reference", description="tiny test model", licence="MIT", packaged=packaged)
    monkeypatch.setitem(weights.REGISTRY, name, spec)
    return spec


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------- download and cache


def test_download_then_cache_without_http(server, monkeypatch, tmp_path, ckpt_bytes, tiny_state):
    server.files["/models/tiny-ttsr.pt"] = ckpt_bytes
    register(monkeypatch, "tiny", server.base + "/models/tiny-ttsr.pt", ckpt_bytes)
    cache = tmp_path / "cache"

    path = weights.fetch("tiny", cache_dir=cache, progress=False)
    assert path == cache / "tiny-ttsr.pt"
    assert path.read_bytes() == ckpt_bytes
    assert server.requests == ["/models/tiny-ttsr.pt"]
    assert files_in(cache) == ["tiny-ttsr.pt"]  # no temp files left

    again = weights.fetch("tiny", cache_dir=cache, progress=False)
    assert again == path
    assert len(server.requests) == 1  # served from the cache

    # and the downloaded file is a usable model
    ckpt = weights.read_checkpoint(path)
    net = TTSR(TTSRConfig(**ckpt.config))
    net.load_state_dict(ckpt.state_dict, strict=True)
    assert all(torch.equal(net.state_dict()[k], tiny_state[k]) for k in tiny_state)


def test_download_progress_callback(server, monkeypatch, tmp_path, ckpt_bytes):
    """Front ends pass a callback: it sees the bytes arrive, ending at the file size."""
    server.files["/tiny-ttsr.pt"] = ckpt_bytes
    register(monkeypatch, "tiny", server.base + "/tiny-ttsr.pt", ckpt_bytes)
    seen = []
    path = weights.fetch("tiny", cache_dir=tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == ckpt_bytes
    assert seen and seen[-1] == (len(ckpt_bytes), len(ckpt_bytes))
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))


def test_prefix_hash_accepted(server, monkeypatch, tmp_path, ckpt_bytes):
    server.files["/tiny-ttsr.pt"] = ckpt_bytes
    spec = register(monkeypatch, "tiny", server.base + "/tiny-ttsr.pt", ckpt_bytes,
                    hash=f"sha256:{sha256(ckpt_bytes)[:8]}")
    assert spec.is_prefix_hash
    path = weights.fetch("tiny", cache_dir=tmp_path, progress=True)  # progress bar path too
    assert path.read_bytes() == ckpt_bytes


@pytest.mark.parametrize("kind", ["full", "prefix"])
def test_hash_mismatch_leaves_nothing(server, monkeypatch, tmp_path, ckpt_bytes, kind):
    server.files["/tiny-ttsr.pt"] = ckpt_bytes
    actual = sha256(ckpt_bytes)
    wrong = "f" * 64 if not actual.startswith("f") else "0" * 64
    expected = wrong if kind == "full" else wrong[:8]
    register(monkeypatch, "tiny", server.base + "/tiny-ttsr.pt", ckpt_bytes, hash=f"sha256:{expected}")
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError) as info:
        weights.fetch("tiny", cache_dir=cache, progress=False)
    msg = str(info.value)
    assert expected in msg and actual in msg and "removed" in msg
    assert files_in(cache) == []


def test_corrupt_cached_file_is_replaced(server, monkeypatch, tmp_path, ckpt_bytes):
    server.files["/tiny-ttsr.pt"] = ckpt_bytes
    register(monkeypatch, "tiny", server.base + "/tiny-ttsr.pt", ckpt_bytes)
    (tmp_path / "tiny-ttsr.pt").write_bytes(ckpt_bytes[:100])
    path = weights.fetch("tiny", cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == ckpt_bytes
    assert len(server.requests) == 1


def test_corrupt_cached_file_offline(monkeypatch, tmp_path, ckpt_bytes):
    url = dead_url("/tiny-ttsr.pt")
    register(monkeypatch, "tiny", url, ckpt_bytes)
    bad = tmp_path / "tiny-ttsr.pt"
    bad.write_bytes(b"not the model")
    with pytest.raises(WeightsError) as info:
        weights.fetch("tiny", cache_dir=tmp_path, progress=False)
    msg = str(info.value)
    assert url in msg and "removed" in msg and sha256(b"not the model") in msg
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("failure", ["server-down", "404"])
def test_download_failure_says_what_to_do(server, monkeypatch, tmp_path, ckpt_bytes, failure):
    url = dead_url("/m/tiny-ttsr.pt") if failure == "server-down" else server.base + "/m/missing.pt"
    register(monkeypatch, "tiny", url, ckpt_bytes)
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError) as info:
        weights.fetch("tiny", cache_dir=cache, progress=False)
    msg = str(info.value)
    assert url in msg
    assert str(cache / "tiny-ttsr.pt") in msg
    assert weights.CACHE_ENV in msg
    assert "\n" not in msg
    if failure == "404":
        assert "404" in msg and server.requests == ["/m/missing.pt"]
    assert files_in(cache) == []


def test_unknown_name_lists_known(monkeypatch, ckpt_bytes):
    register(monkeypatch, "tiny", "http://127.0.0.1:1/x.pt", ckpt_bytes)
    with pytest.raises(WeightsError) as info:
        weights.fetch("no-such-model")
    msg = str(info.value)
    assert "no-such-model" in msg
    for name in ("tiny", "ttsr-rec", "ttsr-gan", "vgg19"):
        assert name in msg


def test_cache_env_var_is_used(server, monkeypatch, tmp_path, ckpt_bytes):
    server.files["/tiny-ttsr.pt"] = ckpt_bytes
    register(monkeypatch, "tiny", server.base + "/tiny-ttsr.pt", ckpt_bytes)
    env_cache = tmp_path / "from-env"
    monkeypatch.setenv(weights.CACHE_ENV, str(env_cache))
    assert weights.cache_dir() == env_cache
    assert weights.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    path = weights.fetch("tiny", progress=False)
    assert path == env_cache / "tiny-ttsr.pt" and path.is_file()
    monkeypatch.delenv(weights.CACHE_ENV)
    assert weights.cache_dir() != env_cache  # falls back to the OS cache


def test_base_url_override(server, monkeypatch, tmp_path, ckpt_bytes):
    server.files["/mirror/tiny-ttsr.pt"] = ckpt_bytes
    register(monkeypatch, "tiny", dead_url("/original/tiny-ttsr.pt"), ckpt_bytes)
    path = weights.fetch("tiny", cache_dir=tmp_path / "a", progress=False,
                         base_url=server.base + "/mirror/")
    assert path.read_bytes() == ckpt_bytes
    monkeypatch.setenv(weights.BASE_URL_ENV, server.base + "/mirror")
    path = weights.fetch("tiny", cache_dir=tmp_path / "b", progress=False)
    assert path.read_bytes() == ckpt_bytes
    assert server.requests == ["/mirror/tiny-ttsr.pt"] * 2


def test_list_weights_reports_cache(server, monkeypatch, tmp_path, ckpt_bytes):
    server.files["/tiny-ttsr.pt"] = ckpt_bytes
    register(monkeypatch, "tiny", server.base + "/tiny-ttsr.pt", ckpt_bytes)
    rows = {r["name"]: r for r in weights.list_weights(cache_dir=tmp_path)}
    assert {"ttsr-rec", "ttsr-gan", "vgg19", "tiny"} <= set(rows)
    assert rows["tiny"]["cached"] is False
    assert rows["tiny"]["path"] == str(tmp_path / "tiny-ttsr.pt")
    assert rows["ttsr-rec"]["description"]
    weights.fetch("tiny", cache_dir=tmp_path, progress=False)
    rows = {r["name"]: r for r in weights.list_weights(cache_dir=tmp_path)}
    assert rows["tiny"]["cached"] is True


def test_packaged_weights_are_hash_checked(monkeypatch, tmp_path, tiny_state):
    monkeypatch.setattr(weights.store, "_PACKAGE_DIR", tmp_path / "pkg")
    packaged = tmp_path / "pkg" / "data" / "default.safetensors"
    weights.save_checkpoint(packaged, tiny_state, CFG.to_dict())
    data = packaged.read_bytes()
    register(monkeypatch, "shipped", None, data, filename="default.safetensors",
             packaged="data/default.safetensors")
    assert weights.fetch("shipped", cache_dir=tmp_path / "cache") == packaged
    assert weights.read_checkpoint(packaged).config["n_feats"] == 8
    rows = {r["name"]: r for r in weights.list_weights(cache_dir=tmp_path / "cache")}
    assert rows["shipped"]["cached"] is True and rows["shipped"]["path"] == str(packaged)

    register(monkeypatch, "shipped", None, b"other", filename="default.safetensors",
             packaged="data/default.safetensors")
    with pytest.raises(WeightsError, match="reinstall"):
        weights.fetch("shipped", cache_dir=tmp_path / "cache")
    assert packaged.read_bytes() == data  # package data is never deleted
    packaged.unlink()
    with pytest.raises(WeightsError, match="missing"):
        weights.fetch("shipped", cache_dir=tmp_path / "cache")


def test_registry_entries_are_well_formed():
    for name in ("ttsr-rec", "ttsr-gan"):
        spec = weights.REGISTRY[name]
        assert spec.format == "mmagic" and spec.url.startswith("https://download.openmmlab.com/")
        # OpenMMLab's convention: the file name ends with the sha256 prefix we check
        assert spec.url.endswith(spec.filename)
        assert spec.filename.rsplit("-", 1)[1].split(".")[0] == spec.hash.split(":")[1]
        assert spec.is_prefix_hash
        assert spec.config == {"arch": "ttsr", "n_feats": 64, "num_res_blocks": [16, 16, 8, 4],
                               "res_scale": 1.0, "scale": 4}
    vgg = weights.REGISTRY["vgg19"]
    assert vgg.url == "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
    assert vgg.hash == "sha256:dcbb9e9d" and vgg.format == "vgg19"
    with pytest.raises(ValueError):
        weights.WeightSpec("x", "http://h/x", "x", "sha256:xyz", "reference", "", "")
    with pytest.raises(ValueError):
        weights.WeightSpec("x", None, "x", "sha256:" + "0" * 64, "reference", "", "")


# --------------------------------------------------------------------------- reading formats


def test_reference_format_round_trip(tmp_path, tiny_state):
    path = tmp_path / "TTSR.pt"
    torch.save(tiny_state, path)
    ckpt = weights.read_checkpoint(path)
    assert ckpt.source_format == "reference"
    assert ckpt.config["arch"] == "ttsr"
    assert ckpt.config["n_feats"] == CFG.n_feats
    assert tuple(ckpt.config["num_res_blocks"]) == CFG.num_res_blocks
    net = TTSR(TTSRConfig(n_feats=8, num_res_blocks=(1, 2, 1, 1)))
    net.load_state_dict(ckpt.state_dict, strict=True)
    for key, value in tiny_state.items():
        assert torch.equal(net.state_dict()[key], value)


def test_reference_format_with_module_prefix_and_copies(tmp_path, tiny_state):
    """Raw reference training saves: ``module.`` prefix, LTE_copy and SearchNet entries."""
    raw = {f"module.{k}": v for k, v in tiny_state.items()}
    raw.update({f"module.LTE_copy.{k[4:]}": v.clone() for k, v in tiny_state.items() if k.startswith("LTE.")})
    raw["module.SearchNet.dummy"] = torch.zeros(1)
    path = tmp_path / "raw.pth"
    torch.save(raw, path)
    ckpt = weights.read_checkpoint(path)
    assert sorted(ckpt.state_dict) == sorted(tiny_state)
    TTSR(CFG).load_state_dict(ckpt.state_dict, strict=True)


# ours → OpenMMLab, written from the table in docs/notes (independent of weights.convert_mmagic)
_TO_MM = {
    "MainNet.SFE.conv_head": "generator.sfe.conv_first",
    "MainNet.SFE.RBs": "generator.sfe.body",
    "MainNet.SFE.conv_tail": "generator.sfe.conv_last",
    "MainNet.conv11_head": "generator.conv_first1",
    "MainNet.RB11": "generator.res_block1",
    "MainNet.conv11_tail": "generator.conv_last1",
    "MainNet.conv22_head": "generator.conv_first2",
    "MainNet.conv33_head": "generator.conv_first3",
    "MainNet.RB21": "generator.res_block2_1",
    "MainNet.RB22": "generator.res_block2_2",
    "MainNet.RB31": "generator.res_block3_1",
    "MainNet.RB32": "generator.res_block3_2",
    "MainNet.RB33": "generator.res_block3_3",
    "MainNet.conv21_tail": "generator.conv_last2_1",
    "MainNet.conv22_tail": "generator.conv_last2_2",
    "MainNet.conv31_tail": "generator.conv_last3_1",
    "MainNet.conv32_tail": "generator.conv_last3_2",
    "MainNet.conv33_tail": "generator.conv_last3_3",
    "MainNet.conv12": "generator.up1.upsample_conv",
    "MainNet.conv23": "generator.up2.upsample_conv",
    "MainNet.ex12.conv12": "generator.csfi2.conv1to2",
    "MainNet.ex12.conv21": "generator.csfi2.conv2to1",
    "MainNet.ex12.conv_merge1": "generator.csfi2.conv_merge1",
    "MainNet.ex12.conv_merge2": "generator.csfi2.conv_merge2",
    "MainNet.ex123.conv12": "generator.csfi3.conv1to2",
    "MainNet.ex123.conv13": "generator.csfi3.conv1to4",
    "MainNet.ex123.conv21": "generator.csfi3.conv2to1",
    "MainNet.ex123.conv23": "generator.csfi3.conv2to4",
    "MainNet.ex123.conv31_1": "generator.csfi3.conv4to1_1",
    "MainNet.ex123.conv31_2": "generator.csfi3.conv4to1_2",
    "MainNet.ex123.conv32": "generator.csfi3.conv4to2",
    "MainNet.ex123.conv_merge1": "generator.csfi3.conv_merge1",
    "MainNet.ex123.conv_merge2": "generator.csfi3.conv_merge2",
    "MainNet.ex123.conv_merge3": "generator.csfi3.conv_merge4",
    "MainNet.merge_tail.conv13": "generator.merge_features.conv1to4",
    "MainNet.merge_tail.conv23": "generator.merge_features.conv2to4",
    "MainNet.merge_tail.conv_merge": "generator.merge_features.conv_merge",
    "MainNet.merge_tail.conv_tail1": "generator.merge_features.conv_last1",
    "MainNet.merge_tail.conv_tail2": "generator.merge_features.conv_last2",
    "LTE.sub_mean": "extractor.img_normalize",
    "LTE": "extractor",
}


def to_mmagic(key: str) -> str:
    """Rename one key by the longest matching dotted prefix of the table."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in _TO_MM:
            return ".".join([_TO_MM[prefix], *parts[n:]])
    raise KeyError(key)


def mmagic_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    sd = {to_mmagic(k): v.clone() for k, v in state.items()}
    sd.update({k.replace("extractor.", "extractor_copy.", 1): v.clone()
               for k, v in list(sd.items()) if k.startswith("extractor.")})
    sd["discriminator.conv_blocks.0.weight"] = torch.randn(32, 3, 3, 3)
    sd["discriminator.linear.0.bias"] = torch.randn(1024)
    sd["perceptual_loss.vgg.vgg_layers.0.weight"] = torch.randn(64, 3, 3, 3)
    meta = {"mmedit_version": "0.8.0", "iter": 200000, "best_psnr": np.float64(25.2433),
            "hook_msgs": {"last_ckpt": "iter_200000.pth"}}
    return {"meta": meta, "state_dict": sd}


def test_mmagic_checkpoint_converts(tmp_path, tiny_state):
    raw = mmagic_checkpoint(tiny_state)
    assert len({k for k in raw["state_dict"] if k.startswith(("generator.", "extractor."))}) == len(tiny_state)
    path = tmp_path / "ttsr-rec_x4_c64b16.pth"
    torch.save(raw, path)
    ckpt = weights.read_checkpoint(path)
    assert ckpt.source_format == "mmagic"
    assert ckpt.meta["iter"] == 200000 and float(ckpt.meta["best_psnr"]) == 25.2433
    assert ckpt.config["n_feats"] == 8 and tuple(ckpt.config["num_res_blocks"]) == (1, 2, 1, 1)
    net = TTSR(CFG)
    net.load_state_dict(ckpt.state_dict, strict=True)
    assert sorted(ckpt.state_dict) == sorted(tiny_state)
    for key, value in tiny_state.items():
        assert torch.equal(ckpt.state_dict[key], value), key


def test_mmagic_unknown_and_missing_keys(tmp_path, tiny_state):
    raw = mmagic_checkpoint(tiny_state)
    raw["state_dict"]["generator.some_new_layer.weight"] = torch.zeros(3)
    path = tmp_path / "unknown.pth"
    torch.save(raw, path)
    with pytest.raises(WeightsError, match=r"generator\.some_new_layer\.weight"):
        weights.read_checkpoint(path)

    raw = mmagic_checkpoint(tiny_state)
    del raw["state_dict"]["generator.csfi3.conv_merge4.bias"]
    torch.save(raw, path)
    with pytest.raises(WeightsError) as info:
        weights.read_checkpoint(path)
    assert "missing 1 keys" in str(info.value) and "MainNet.ex123.conv_merge3.bias" in str(info.value)


def test_convert_mmagic_direct(tiny_state):
    sd = {to_mmagic(k): v for k, v in tiny_state.items()}
    sd["discriminator.x.weight"] = torch.zeros(1)
    out = convert_mmagic(sd)
    assert out.keys() == tiny_state.keys()
    with pytest.raises(WeightsError, match="unrecognised"):
        convert_mmagic({"generator.sfe.body.0.conv3.weight": torch.zeros(1)})


# --------------------------------------------------------------------------- bad files


def _err(path: Path) -> str:
    with pytest.raises(WeightsError) as info:
        weights.read_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    return msg


class Opaque:
    """A class whose pickled instances must not be loaded."""

    def __init__(self) -> None:
        self.x = 1


def test_bad_files_give_clear_errors(tmp_path, tiny_state, ckpt_bytes):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "empty" in _err(empty)

    missing = tmp_path / "nope.pt"
    assert "not found" in _err(missing)

    rand = tmp_path / "random.pth"
    rand.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "not a PyTorch checkpoint" in _err(rand)

    trunc = tmp_path / "truncated.pt"
    trunc.write_bytes(ckpt_bytes[: len(ckpt_bytes) // 2])
    assert "truncated" in _err(trunc)

    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    assert "Tensor, not a dict" in _err(tensor)

    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], lst)
    assert "list, not a dict" in _err(lst)

    foreign = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.bias": torch.zeros(10)}, foreign)
    msg = _err(foreign)
    assert "not a TTSR checkpoint" in msg and "conv1.weight" in msg

    vgg = tmp_path / "vgg19.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "classifier.0.weight": torch.zeros(2, 2)}, vgg)
    assert "VGG" in _err(vgg)
    assert set(weights.load_state_dict_file(vgg)) == {"features.0.weight", "classifier.0.weight"}

    obj = tmp_path / "object.pt"
    torch.save({"state_dict": tiny_state, "extra": Opaque()}, obj)
    msg = _err(obj)
    assert "Opaque" in msg and "could run code" in msg

    nontensor = tmp_path / "strings.pt"
    torch.save({"MainNet.x": "hello"}, nontensor)
    assert "not a tensor" in _err(nontensor)

    emptydict = tmp_path / "emptydict.pt"
    torch.save({}, emptydict)
    assert "no weights" in _err(emptydict)

    wrong_shape = dict(tiny_state)
    wrong_shape["MainNet.conv12.weight"] = torch.zeros(1, 8, 3, 3)
    ws = tmp_path / "wrongshape.pt"
    torch.save(wrong_shape, ws)
    assert "wrong shapes" in _err(ws)

    st = tmp_path / "trunc.safetensors"
    weights.save_checkpoint(st, tiny_state, CFG.to_dict())
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    assert "safetensors" in _err(st)


def test_pickled_code_is_never_run(tmp_path):
    """A classic pickle payload (os.system via __reduce__) is refused without running."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"MainNet.x": Evil()}, path)
    msg = _err(path)
    assert "system" in msg
    assert not marker.exists()


# --------------------------------------------------------------------------- our export


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_checkpoint_round_trip(tmp_path, tiny_state, suffix):
    out = tmp_path / "sub" / f"model{suffix}"
    meta = {"trained_on": "tests", "epoch": 3}
    assert weights.save_checkpoint(out, tiny_state, CFG.to_dict(), meta) == out
    assert files_in(out.parent) == [out.name]
    ckpt = weights.read_checkpoint(out)
    assert ckpt.source_format == "refsr"
    assert ckpt.config == CFG.to_dict()
    assert ckpt.meta == meta
    net = TTSR(TTSRConfig(**ckpt.config))
    net.load_state_dict(ckpt.state_dict, strict=True)
    for key, value in tiny_state.items():
        assert torch.equal(ckpt.state_dict[key], value)
    # overwriting is atomic too and still leaves only the target
    weights.save_checkpoint(out, tiny_state, CFG.to_dict(), {"epoch": 4})
    assert weights.read_checkpoint(out).meta == {"epoch": 4}
    assert files_in(out.parent) == [out.name]


def test_export_of_another_arch_keeps_its_config(tmp_path):
    """Our format is arch-agnostic: a non-TTSR config is carried through, not forced to TTSR."""
    cfg = {"arch": "srntt", "n_feats": 4}
    sd = {"conv.weight": torch.randn(4, 3, 3, 3)}
    for suffix in (".pt", ".safetensors"):
        path = weights.save_checkpoint(tmp_path / f"srntt{suffix}", sd, cfg)
        ckpt = weights.read_checkpoint(path)
        assert ckpt.config == cfg and ckpt.source_format == "refsr"
        assert torch.equal(ckpt.state_dict["conv.weight"], sd["conv.weight"])


def test_export_config_must_match_tensors(tmp_path, tiny_state):
    path = weights.save_checkpoint(tmp_path / "m.pt", tiny_state, TTSRConfig(n_feats=16).to_dict())
    msg = _err(path)
    assert "n_feats=16" in msg and "wrong shapes" in msg


def test_save_checkpoint_bad_input_leaves_nothing(tmp_path, tiny_state):
    with pytest.raises(RefSRError, match="JSON"):
        weights.save_checkpoint(tmp_path / "m.pt", tiny_state, CFG.to_dict(), {"bad": object()})
    with pytest.raises(RefSRError, match="arch"):
        weights.save_checkpoint(tmp_path / "m.pt", tiny_state, {"n_feats": 8})
    with pytest.raises(RefSRError, match=".safetensors"):
        weights.save_checkpoint(tmp_path / "m.bin", tiny_state, CFG.to_dict())
    assert files_in(tmp_path) == []


def test_model_names_lists_super_resolution_models_only():
    names = weights.model_names()
    assert names == [n for n in weights.REGISTRY if weights.REGISTRY[n].format != "vgg19"]
    assert "ttsr-rec" in names and "ttsr-gan" in names and "vgg19" not in names

"""Weights whose publisher gives only an 8-hex sha256 prefix: said so, and a pinned full digest is enforced.

(issue 14, "Also") A registry entry with a prefix hash is served from the cache folder (its URL is a
closed port, so any re-download fails loudly); pins come from ``$NAPARI_REFSR_SHA256`` or the
``pins.json`` that ``refsr weights pin`` writes.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from napari_refsr import cli, weights
from napari_refsr.weights import pins
from napari_refsr.errors import WeightsError

DATA = b"pretend weights " * 64
FULL = hashlib.sha256(DATA).hexdigest()
SAME_PREFIX_OTHER = FULL[:8] + ("0" if FULL[8] != "0" else "1") + FULL[9:]  # what a 32-bit check cannot tell apart


@pytest.fixture
def cached(monkeypatch, tmp_path):
    """Registry entry 'tiny' (published: the first 8 hex digits), its file already in the cache."""
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(pins.PINS_ENV, raising=False)
    monkeypatch.delenv(weights.BASE_URL_ENV, raising=False)
    spec = weights.WeightSpec(name="tiny", url="http://127.0.0.1:9/tiny.pth", filename="tiny.pth",
                              hash=f"sha256:{FULL[:8]}", format="reference", description="test", licence="MIT")
    monkeypatch.setitem(weights.REGISTRY, "tiny", spec)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tiny.pth").write_bytes(DATA)
    return tmp_path / "cache"


def test_weights_list_says_which_files_are_checked_on_32_bits_only(capsys):
    assert cli.main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "sha256 prefix b0dba584 only (32 bits" in out and "refsr weights pin ttsr-rec" in out
    assert "sha256 6ffffeef8b7b… (full digest)" in out  # the shipped default


def test_without_a_pin_the_prefix_is_what_is_checked(cached):
    assert weights.fetch("tiny", progress=False).read_bytes() == DATA


def test_a_pinned_full_sha256_in_the_environment_is_enforced(cached, monkeypatch):
    monkeypatch.setenv(pins.PINS_ENV, f"other=sha256:{'a' * 64}, tiny={SAME_PREFIX_OTHER}")
    with pytest.raises(WeightsError, match=f"expected {SAME_PREFIX_OTHER}"):
        weights.fetch("tiny", progress=False)
    assert not (cached / "tiny.pth").exists()  # the mismatching file is not kept
    monkeypatch.setenv(pins.PINS_ENV, f"tiny={FULL}")
    (cached / "tiny.pth").write_bytes(DATA)
    assert weights.fetch("tiny", progress=False).read_bytes() == DATA
    assert "pinned in $NAPARI_REFSR_SHA256" in weights.hash_note("tiny")


def test_refsr_weights_pin_records_the_verified_files_digest_and_it_is_enforced(cached, capsys):
    assert cli.main(["weights", "pin", "tiny"]) == 0
    assert json.loads((cached / pins.PINS_FILE).read_text()) == {"tiny": FULL}
    assert f"sha256 {FULL} pinned" in capsys.readouterr().out
    assert weights.fetch("tiny", progress=False).read_bytes() == DATA
    assert cli.main(["weights", "list"]) == 0
    assert f"sha256 {FULL[:12]}… (full digest pinned in {cached / pins.PINS_FILE})" in capsys.readouterr().out
    (cached / pins.PINS_FILE).write_text(json.dumps({"tiny": SAME_PREFIX_OTHER}))  # e.g. pinned elsewhere
    with pytest.raises(WeightsError, match="expected"):
        weights.fetch("tiny", progress=False)


def test_a_wrong_pin_is_refused(cached, capsys):
    assert cli.main(["weights", "pin", "tiny", SAME_PREFIX_OTHER]) == cli.EXIT_USAGE
    assert "nothing was pinned" in capsys.readouterr().err
    assert not (cached / pins.PINS_FILE).exists()
    assert cli.main(["weights", "pin", "refsr-compact"]) == cli.EXIT_USAGE  # full digest already
    assert "nothing to pin" in capsys.readouterr().err


@pytest.mark.parametrize("value, match", [
    ("tiny=" + "f" * 64, "does not start with the publisher's"),
    ("tiny=abc", "not 64 hex digits"),
    ("tiny", "must look like name=<sha256>"),
])
def test_bad_pins_are_one_line_errors(cached, monkeypatch, value, match):
    monkeypatch.setenv(pins.PINS_ENV, value)
    with pytest.raises(WeightsError, match=match):
        weights.fetch("tiny", progress=False)

"""Training data from arrays (what the fine-tune widget writes): frames, held-out strips,
references, and the errors that stop a run before it starts."""

from __future__ import annotations

import numpy as np
import pytest

from napari_refsr.errors import RefSRError
from napari_refsr.imageio import read_image
from training.array_data import MIN_VAL, ArrayImage, write_training_data


def test_stack_frames_strips_and_references(tmp_path, rng):
    stack = (rng.random((2, 200, 96)) * 4000).astype(np.uint16)  # Z, Y, X
    ref = (rng.random((80, 80)) * 4000).astype(np.uint16)
    td = write_training_data([ArrayImage("z stack", stack)], tmp_path, crop=64, references=[ArrayImage("r", ref)])
    assert (td.n_train, td.n_val) == (2, 2)
    names = sorted(p.name for p in td.train.iterdir())
    assert names == ["000_z_stack_0000.tif", "000_z_stack_0001.tif"]
    train, val = read_image(td.train / names[1]), read_image(td.val / names[1])
    assert train.dtype == np.uint16 and train.shape == (200 - MIN_VAL, 96) and val.shape == (MIN_VAL, 96)
    np.testing.assert_array_equal(np.concatenate([train, val]), stack[1])  # held out, not copied
    assert sorted(p.name for p in td.ref_dir.iterdir()) == names and td.val_ref_dir is not None
    assert td.overrides()["data.val_ref_dir"] == str(td.val_ref_dir)


def test_short_images_train_whole_and_rewrites_replace(tmp_path, rng):
    rgb = (rng.random((70, 90, 3)) * 255).astype(np.uint8)
    write_training_data([ArrayImage("old", rgb, rgb=True)] * 2, tmp_path, crop=32)
    td = write_training_data([ArrayImage("short", rgb, rgb=True)], tmp_path, crop=64)
    assert td.val is None and td.n_val == 0  # 70 px cannot give up a 64-px strip and keep a 64-px crop
    assert [p.name for p in td.train.iterdir()] == ["000_short.tif"]
    assert read_image(td.train / "000_short.tif").shape == (70, 90, 3)


@pytest.mark.parametrize("images, refs, message", [
    ([ArrayImage("a", np.zeros((100, 40), np.uint8))], [], "smaller than the 64-pixel training crop"),
    ([ArrayImage("g", np.zeros((99, 99), np.uint8)), ArrayImage("c", np.zeros((99, 99, 3), np.uint8), rgb=True)],
     [], "mix grayscale and colour"),
    ([ArrayImage("f", np.full((99, 99), np.nan, np.float32))], [], "NaN"),
    ([ArrayImage("a", np.zeros((99, 99), np.uint8))] * 3, [ArrayImage("r", np.zeros((99, 99), np.uint8))] * 2,
     "one per layer"),
    ([ArrayImage("a", np.zeros((99, 99), np.uint8))], [ArrayImage("r", np.zeros((40, 99), np.uint8))],
     "reference 'r' of size"),
    ([], [], "at least one training image"),
])
def test_bad_data_raise_before_writing(tmp_path, images, refs, message):
    with pytest.raises(RefSRError, match=message):
        write_training_data(images, tmp_path / "d", crop=64, references=refs)
    assert not (tmp_path / "d").exists()

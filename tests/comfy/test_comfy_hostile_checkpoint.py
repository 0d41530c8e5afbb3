"""ComfyUI loads a downloaded checkpoint through the core's guarded loader (issue 14, item 2):
a few-hundred-byte file asking for a 14 GB network is a one-line error in the node, not an
allocation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from test_comfy_nodes import REFSR_DIR, RefSRError, cn, run  # the stand-in set up there

from napari_refsr import weights


@pytest.fixture
def hostile():
    REFSR_DIR.mkdir(parents=True, exist_ok=True)
    path = REFSR_DIR / "hostile-wide.safetensors"
    save_file({"MainNet.SFE.conv_head.weight": torch.zeros(1)}, str(path),
              metadata={"format": weights.EXPORT_FORMAT, "version": "1", "meta": "{}",
                        "config": json.dumps({"arch": "ttsr", "n_feats": 20000})})
    yield path
    path.unlink()


def test_the_loader_node_refuses_a_checkpoint_that_asks_for_20000_features(hostile):
    with pytest.raises(RefSRError, match="n_feats=20000 is out of bounds") as info:
        run(cn.LoadRefSRModel, model_name=hostile.name)
    assert "\n" not in str(info.value)

"""ComfyUI loads a downloaded checkpoint through the core's guarded loader (issue 14, item 2):
a few-hundred-byte file asking for a network of 5000 blocks is a one-line error in the node,
refused before anything is built. (Small blocks, so that a regression fails the test instead of
exhausting the machine's memory; the subprocess tests in tests/core cover the 14 GB case.)"""

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
    path = REFSR_DIR / "hostile-deep.safetensors"
    save_file({"MainNet.SFE.conv_head.weight": torch.zeros(1)}, str(path),
              metadata={"format": weights.EXPORT_FORMAT, "version": "1", "meta": "{}",
                        "config": json.dumps({"arch": "ttsr", "n_feats": 8, "num_res_blocks": [5000, 1, 1, 1]})})
    yield path
    path.unlink()


def test_the_loader_node_refuses_a_checkpoint_that_asks_for_5000_blocks(hostile):
    with pytest.raises(RefSRError, match=r"num_res_blocks=\[5000, 1, 1, 1\] is out of bounds") as info:
        run(cn.LoadRefSRModel, model_name=hostile.name)
    assert "\n" not in str(info.value)

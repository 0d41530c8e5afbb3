"""What every reference-based network offers, so the pipeline, the front ends and training run
any of them without knowing which: encode a reference set once, run LR tiles against it, name its
texture extractor, its trainable parameter groups and the texture loss that applies to it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable, Mapping, NamedTuple, Sequence

import torch
import torch.nn as nn

from ..coarse_search import coarse_search_padded
from ..search import DEFAULT_BUDGET, search_padded
from .blocks import to_unit


class NetworkConfig:
    """Shared parts of the architecture config dataclasses (fields ``n_feats``, ``scale``, ``arch``)."""

    def check_shared(self, title: str) -> None:
        if self.n_feats < 2 or self.n_feats % 2:
            raise ValueError(f"n_feats must be an even number >= 2, got {self.n_feats}")
        if self.scale != 4:
            raise ValueError(f"{title} is defined for ×4 only (scale=4)")

    def to_dict(self) -> dict:
        """Plain data (tuples as lists), as JSON and YAML hold it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def block_counts(value, n: int, what: str) -> tuple[int, ...]:
    """``n`` residual-block counts >= 0 from a sequence or a string like ``"16+16+8+4"``."""
    counts = tuple(int(c) for c in (value.split("+") if isinstance(value, str) else value))
    if len(counts) != n or min(counts) < 0:
        words = {3: "three", 4: "four"}
        raise ValueError(f"{what} needs {words.get(n, n)} counts >= 0, got {counts}")
    return counts


class ReferenceBank(NamedTuple):
    """Extractor features of one sample's reference set, computed once and reused for every tile."""

    keys: list[torch.Tensor]  # level-3 features of each Ref↓↑ (C, h, w): what is searched
    lv1: list[torch.Tensor]  # level-1 features of each Ref (64, 4h, 4w): transferred at ×4
    lv2: list[torch.Tensor]  # (128, 2h, 2w)
    lv3: list[torch.Tensor]  # (256, h, w)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Key grid (h, w) of each reference: reference pixels / 4."""
        return [tuple(k.shape[1:]) for k in self.keys]


class RefSRNetwork(nn.Module):
    """Base of the ×4 reference-based networks (images in [-1, 1]).

    A subclass sets ``texture_loss`` and ``trainable_extractor``, exposes its VGG-style
    ``texture_extractor`` (relu1_1, relu2_1, relu3_1 of images in [0, 1]) and implements
    :meth:`forward_bank`; its output is a tuple ``(sr, S, lv3, lv2, lv1, index)``.
    """

    search_budget: int = DEFAULT_BUDGET  # scratch bytes of one texture search unless a call says otherwise
    search_channels: int = 256  # channels of the level-3 features the search compares (relu3_1)
    texture_loss: str = ""  # the training loss on the transferred textures: "tpl" (TTSR) or "tex" (SRNTT)
    trainable_extractor: bool = False  # does training update the texture extractor (own learning rate)?

    @property
    def texture_extractor(self) -> nn.Module:
        raise NotImplementedError

    @property
    def search_phases(self) -> int:
        """Reference copies per axis that inference searches unless told otherwise
        (:mod:`napari_refsr.phases`); 1, the published search, for networks that do not say."""
        return int(getattr(self.config, "search_phases", 1))

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Extractor features of images in [-1, 1] (detached input, as in the reference)."""
        return self.texture_extractor(to_unit(x.detach()))

    def load_vgg19(self, vgg_state: Mapping[str, torch.Tensor]) -> None:
        """Initialise the texture extractor from torchvision VGG19 ImageNet weights (``features.N.*``)."""
        self.texture_extractor.load_vgg19(dict(vgg_state))

    def parameter_groups(self, lr: float, extractor_lr: float) -> list[dict]:
        """Optimiser groups: everything trainable at ``lr``; a trainable extractor at its own rate."""
        extractor = {id(p) for p in self.texture_extractor.parameters()}
        groups = [{"params": [p for p in self.parameters() if p.requires_grad and id(p) not in extractor],
                   "lr": float(lr)}]
        if self.trainable_extractor:
            groups.append({"params": [p for p in self.texture_extractor.parameters() if p.requires_grad],
                           "lr": float(extractor_lr)})
        return groups

    def encode_references(
        self, refs: Sequence[torch.Tensor], refs_down_up: Sequence[torch.Tensor],
        step: Callable[[], None] | None = None,
    ) -> list[ReferenceBank]:
        """Per sample, the features of its references. Each tensor is (N or 1, 3, Hr, Wr)
        with Hr, Wr multiples of 4; a batch of 1 is shared by all samples. Keys are relu3_1 of
        Ref↓↑, values the three levels of the original Ref. ``step`` (if given) is called after
        each reference's keys and after its values (progress: 2 steps per reference)."""
        n = max(r.shape[0] for r in refs)
        banks = [ReferenceBank([], [], [], []) for _ in range(n)]
        for ref, ref_du in zip(refs, refs_down_up):
            if ref.shape != ref_du.shape or ref.shape[-1] % 4 or ref.shape[-2] % 4:
                raise ValueError(f"reference and its Ref↓↑ must match and be multiples of 4, got "
                                 f"{tuple(ref.shape)} and {tuple(ref_du.shape)}")
            keys = self.extract(ref_du)[2]
            if step is not None:
                step()
            lv1, lv2, lv3 = self.extract(ref)
            if step is not None:
                step()
            for b in range(n):
                i = b if ref.shape[0] > 1 else 0
                banks[b].keys.append(keys[i])
                banks[b].lv1.append(lv1[i])
                banks[b].lv2.append(lv2[i])
                banks[b].lv3.append(lv3[i])
        return banks

    def attend(self, query_padded: torch.Tensor, bank: ReferenceBank, *, keys=None, approximate: bool = False,
               **search_options):
        """(S, index) (H, W) of a level-3 query map (C, H+2, W+2) that carries its 1-pixel ring
        (zeros at an image border, the neighbours' features for a piece of a larger image): the
        index of the best reference patch and S, its cosine — the hard and soft attention of
        every network here. ``keys``: the bank's keys made ready once
        (:func:`napari_refsr.shift_search.prepare_keys`); options go to
        :func:`napari_refsr.search.search_padded`, or with ``approximate`` to
        :func:`napari_refsr.coarse_search.coarse_search_padded` (coarse to fine)."""
        searcher = coarse_search_padded if approximate else search_padded
        return searcher(query_padded, bank.keys if keys is None else keys, normalize_query=True, **search_options)

    def textures(self, index: torch.Tensor, bank: ReferenceBank) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The level-3/2/1 texture maps the network takes for hard-attention indices (H, W)."""
        raise NotImplementedError

    def decode(self, lr: torch.Tensor, lr_up: torch.Tensor, S: torch.Tensor, t3: torch.Tensor, t2: torch.Tensor,
               t1: torch.Tensor) -> torch.Tensor:
        """The SR image (N, 3, 4H, 4W) from LR (N, 3, H, W), LR↑, S (N, 1, H, W) and the textures:
        the trainable network after the search (the pipeline runs it tile by tile)."""
        raise NotImplementedError

    def forward_bank(self, lr: torch.Tensor, lr_up: torch.Tensor, banks: Sequence[ReferenceBank], *,
                     search_budget: int | None = None):
        """SR for a batch whose references were encoded with :meth:`encode_references`;
        ``search_budget`` (bytes) bounds the texture search's scratch memory."""
        raise NotImplementedError

    def forward(self, lr, lr_up, ref, ref_down_up):
        """The reference's call: four NCHW tensors in [-1, 1] (LR, LR↑, Ref, Ref↓↑).

        ``ref``/``ref_down_up`` may also be lists of tensors: several references per sample,
        whose patches are searched together.
        """
        refs = list(ref) if isinstance(ref, (list, tuple)) else [ref]
        refs_du = list(ref_down_up) if isinstance(ref_down_up, (list, tuple)) else [ref_down_up]
        return self.forward_bank(lr, lr_up, self.encode_references(refs, refs_du))

    def _budget(self, search_budget: int | None) -> int:
        return self.search_budget if search_budget is None else int(search_budget)

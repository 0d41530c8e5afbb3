"""Training front end: fine-tune or train TTSR on your own images (``python training/train.py``).

Modules: :mod:`.config` (YAML + overrides), :mod:`.data` (datasets), :mod:`.losses`,
:mod:`.checkpoints` (atomic save/resume), :mod:`.plot` (curves), :mod:`.evaluate` (PSNR/SSIM),
:mod:`.train` (the loop, single process or DDP under torchrun).
"""

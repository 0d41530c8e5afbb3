"""Training front end: fine-tune or train TTSR or SRNTT on your own images (``python training/train.py``).

Modules: :mod:`.train` (the command line), :mod:`.trainer` (one run: the loop, validation,
export), :mod:`.distributed` (DDP under torchrun), :mod:`.config` (defaults + YAML + overrides),
:mod:`.data` (files, degradation, training and evaluation sets, sampler), :mod:`.losses`,
:mod:`.checkpoints` (atomic save/resume, checkpoint → network, exports), :mod:`.logs` (CSV,
TensorBoard), :mod:`.plot` (curves), :mod:`.evaluate` (PSNR/SSIM).
"""

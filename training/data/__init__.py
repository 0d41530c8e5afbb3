"""Training and evaluation data, by subject: image files (:mod:`.files`), the HR → LR degradation
(:mod:`.degrade`), the training sets (:mod:`.trainsets`), the sample order (:mod:`.sampler`) and the
evaluation sets (:mod:`.evalsets`). The names below are the package's API."""

from .degrade import SCALE, Degradation, gaussian_blur
from .evalsets import EvalItem, eval_items
from .files import ImageFile, list_images
from .sampler import EpochSampler
from .trainsets import CUFEDTrainSet, FolderTrainSet, build_train_set

__all__ = [
    "list_images", "ImageFile", "Degradation", "gaussian_blur", "CUFEDTrainSet", "FolderTrainSet", "build_train_set",
    "EvalItem", "eval_items", "EpochSampler", "SCALE",
]

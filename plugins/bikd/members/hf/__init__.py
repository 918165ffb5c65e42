"""Members from Hugging Face ``transformers``: the weights (:mod:`.weights`: build, load,
export in the library's own format) and the image processors' steps on the shared batch
(:mod:`.processors`). The task packages subclass :class:`TransformersModel`."""
from .processors import (RESAMPLE_NAMES, ImagePreprocessing, plain_image_processor,
                         resample_number)
from .weights import TransformersModel, call_hub, require_transformers

__all__ = ['RESAMPLE_NAMES', 'ImagePreprocessing', 'TransformersModel', 'call_hub',
           'plain_image_processor', 'require_transformers', 'resample_number']

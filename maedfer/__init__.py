"""maedfer: self-supervised dynamic facial expression recognition (MAE-DFER) at scale.

Sub-packages: ``manifests`` (dataset protocols), ``preprocess`` (faces and clips),
``pipelines`` (clip loading), ``model`` (LGI-Former, ViT baseline, MAE pre-training),
``train`` (recipes). See DESIGN.md for the contracts.
"""

from maedfer.errors import MaedferError

__version__ = "0.1.0"
__all__ = ["MaedferError", "__version__"]

"""Models: LGI-Former classifier, VideoMAE ViT-B baseline, MAE-DFER pre-training (DESIGN.md §5).

``create_model(name, **overrides)`` builds any of ``list_models()``; ``load_official`` imports
official MAE-DFER weights.
"""

from maedfer.model.lgi_former import LGIFormer, LGIFormerEncoder
from maedfer.model.masking import TubeWindowMasking
from maedfer.model.official import LoadReport, OfficialCheckpointError, load_official
from maedfer.model.pretrain import MaskedLGIFormer
from maedfer.model.registry import (
    create_model,
    list_models,
    model_info,
    models_of_kind,
    register_model,
)
from maedfer.model.vit import VideoViT

__all__ = [
    "LGIFormer",
    "LGIFormerEncoder",
    "LoadReport",
    "MaskedLGIFormer",
    "OfficialCheckpointError",
    "TubeWindowMasking",
    "VideoViT",
    "create_model",
    "list_models",
    "load_official",
    "model_info",
    "models_of_kind",
    "register_model",
]

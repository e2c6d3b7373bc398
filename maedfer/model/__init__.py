"""Models: LGI-Former and MAE-DFER pre-training, and the encoders of its lineage (docs/design.md).

``create_model(name, **overrides)`` builds any of ``list_models()``: ``lgi_former_*`` and
``mae_lgi_former_*`` (MAE-DFER), ``videomae_*`` (``vit_base`` is ``videomae_base``),
``marlin_*``, ``svfap_*``, ``s4d_*`` and ``hicmae_*`` (docs/models.md); ``load_official``
imports the authors' released weights, ``input_contract`` tells what a model expects of its
clips.
"""

from maedfer.model.hicmae import HiCMAEVisual
from maedfer.model.lgi_former import LGIFormer, LGIFormerEncoder
from maedfer.model.marlin import MarlinViT
from maedfer.model.masking import TubeWindowMasking
from maedfer.model.official import LoadReport, OfficialCheckpointError, load_official
from maedfer.model.pretrain import MaskedLGIFormer
from maedfer.model.registry import (
    InputContract,
    canonical_name,
    create_model,
    input_contract,
    list_models,
    model_info,
    models_of_kind,
    register_model,
)
from maedfer.model.s4d import S4DViT
from maedfer.model.svfap import TPSBT
from maedfer.model.videomae import VideoMAEViT, VideoViT

__all__ = [
    "TPSBT",
    "HiCMAEVisual",
    "InputContract",
    "LGIFormer",
    "LGIFormerEncoder",
    "LoadReport",
    "MarlinViT",
    "MaskedLGIFormer",
    "OfficialCheckpointError",
    "S4DViT",
    "TubeWindowMasking",
    "VideoMAEViT",
    "VideoViT",
    "canonical_name",
    "create_model",
    "input_contract",
    "list_models",
    "load_official",
    "model_info",
    "models_of_kind",
    "register_model",
]

# timm may have been imported by the modules above, before their models were registered: the
# registration with timm (maedfer/_timm.py) happens now that they all are.
_READY = True
from maedfer import _timm  # noqa: E402

_timm.register_pending()

"""Inference: an application of a fine-tuned model, apart from training (docs/inference.md).

- :mod:`~maedfer.inference.loading`: any classifier checkpoint (ours, ``final.pt``, official)
  → model and input settings;
- :mod:`~maedfer.inference.windows`: prediction windows over streamed faces, model input;
- :mod:`~maedfer.inference.predictor`: :class:`Predictor` (``predict(video)``,
  ``predict_frames(frames, fps)``, ``stream(frames, fps)``, ``embed(video)``) and
  :class:`Prediction`;
- :mod:`~maedfer.inference.explain`: ``explain=True``'s relevance maps (:class:`Explanation`);
- :mod:`~maedfer.inference.stream` and :mod:`~maedfer.inference.live`: window results as the
  frames come, and ``predict --camera/--stream/--realtime``;
- :mod:`~maedfer.inference.predict`: ``maedfer predict`` on many videos, the tables;
- :mod:`~maedfer.inference.render`: the timeline PNG and the overlay video;
- :mod:`~maedfer.inference.export`: safetensors and ONNX;
- :mod:`~maedfer.inference.embed`: features per window or per manifest clip;
- :mod:`~maedfer.inference.reconstruct`: :class:`Reconstructor`, a pre-trained MAE's
  reconstructions of masked windows (``maedfer reconstruct``: ``reconstruct_run``, pictures:
  ``reconstruct_render``).

No CLI library is imported here: ``maedfer/cli/`` declares the commands and calls these.
"""

from maedfer.inference.explain import Explanation
from maedfer.inference.loading import ModelSettings, load_classifier
from maedfer.inference.predictor import FacesFound, Prediction, Predictor
from maedfer.inference.reconstruct import Reconstructor, WindowReconstruction
from maedfer.inference.stream import WindowResult
from maedfer.inference.windows import stream_windows, window_batch, window_indices

__all__ = [
    "Explanation",
    "FacesFound",
    "ModelSettings",
    "Prediction",
    "Predictor",
    "Reconstructor",
    "WindowReconstruction",
    "WindowResult",
    "load_classifier",
    "stream_windows",
    "window_batch",
    "window_indices",
]

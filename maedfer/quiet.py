"""Library warnings meant for developers, kept off a user's terminal.

torch, matplotlib and the other libraries warn about their own internals (a deprecated
``LeafSpec`` check inside ``torch.onnx.export``, a font cache being built, an API that will
change): nothing a user of maedfer can act on. :func:`quiet_library_warnings` silences
deprecation and future warnings from anywhere and every warning issued inside those libraries;
maedfer's own warnings (its log lines) are untouched. The command line calls it, and so do
worker processes that do not inherit its filters (``prepare``'s fork server workers).

Documented in docs/design.md, "Wings".
"""

from __future__ import annotations

import warnings

#: Packages whose warnings concern their own code.
LIBRARIES = (
    "torch",
    "torchvision",
    "timm",
    "matplotlib",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "facenet_pytorch",
    "av",
    "numpy",
    "pandas",
    "pyarrow",
    "cv2",
    "PIL",
    "copyreg",
    "tensorboard",
    "nvidia",
)


def quiet_library_warnings() -> None:
    """Install the filters (idempotent: the same filters are not added twice)."""
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    pattern = r"^(" + "|".join(LIBRARIES) + r")(\.|$)"
    warnings.filterwarnings("ignore", module=pattern)

"""Whether NVDEC's driver library is on this machine (DALI's GPU video decoder needs it).

DALI's mixed video decoder loads ``libnvcuvid`` from the NVIDIA driver at run time. Containers
often mount only the driver's compute libraries (``NVIDIA_DRIVER_CAPABILITIES=compute,utility``),
and then every GPU decode fails: this module tells that apart from faulty files, without DALI.

Documented in docs/design.md, "Decoding backends".
"""

from __future__ import annotations

import ctypes
import functools

#: What to say when the library is missing.
MISSING = (
    "NVDEC's driver library (libnvcuvid.so.1) is not on this machine, so DALI cannot "
    "decode video on the GPU; in a container, add 'video' to NVIDIA_DRIVER_CAPABILITIES "
    "(or use backend pyav: --set data.backend=pyav)"
)


@functools.cache
def library() -> str | None:
    """The name of the ``libnvcuvid`` that loads here, ``None`` where none does."""
    for name in ("libnvcuvid.so.1", "libnvcuvid.so"):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return name
    return None

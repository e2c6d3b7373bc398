"""The dataset registry: each protocol module declares itself (docs/design.md).

A dataset is one module under ``maedfer/manifests/`` whose protocol class carries the
``@register_dataset`` decorator, as timm's models carry ``@register_model``::

    @register_dataset("ravdess", media=("videos",), published=PUBLISHED_FINGERPRINTS)
    class Ravdess(Protocol):
        ...

The decorator records a :class:`DatasetInfo` (name, how clips are read, what the raw tree
holds, the published fingerprints and results) and one instance of the protocol. The CLI's
choices for ``prepare``, the preprocess driver (in place or prepared clips) and the fingerprint
check all read the registry; nothing else lists datasets. The modules of the package are
imported on first use (:func:`list_datasets`), so a new module is found without being named
anywhere else.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from maedfer.errors import MaedferError

if TYPE_CHECKING:
    from maedfer.manifests.base import Protocol

Media = Literal["videos", "frames"]
#: How an in-place dataset's clips are cut when decoded (the manifest's ``crop``):
#: ``upper-centre`` is MAE-DFER's VoxCeleb2 box (top rows, centred), ``centre`` the largest
#: centred square.
CropRule = Literal["upper-centre", "centre"]

# Shared modules of the package: never dataset protocols.
_SHARED = frozenset(
    {
        "base",
        "fingerprints",
        "folds",
        "io",
        "layout",
        "registry",
        "schema",
        "splitfiles",
        "voxceleb2_excluded",
    }
)


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows of one dataset.

    Attributes:
        name: the name ``prepare`` takes and the manifest stores (``maedfer.dataset``).
        protocol: the protocol instance (``get_protocol(name)``).
        in_place: clips are face crops read from the raw tree with a crop rather than
            prepared (VoxCeleb2), unless ``--reencode`` (which writes the crops, without face
            detection); a protocol instance's own ``in_place`` (``folder --in-place``) wins.
        crop: the crop rule of in-place clips.
        media: what the raw tree holds: ``videos``, ``frames`` (official face frames, resized
            without detection) or both (DFEW, FERV39k, MAFW: ``--from-video`` picks the videos).
        published: docs/datasets.md's published fingerprints (keys as in ``detailed_fingerprints``),
            empty where none are published.
        results: MAE-DFER's published test figures (``{"uar", "war", ...}``), None where none.
        options: the dataclass of the dataset's own ``prepare`` options (its fields are the
            flags, with their defaults and help lines); None for a dataset without any.
        module: the module that registered it.
    """

    name: str
    protocol: Protocol
    in_place: bool = False
    crop: CropRule = "upper-centre"
    media: tuple[Media, ...] = ("videos",)
    published: Mapping[str, str] = field(default_factory=dict)
    results: Mapping[str, object] | None = None
    options: type | None = None
    module: str = ""


_REGISTRY: dict[str, DatasetInfo] = {}
_LOADED = False


def register_dataset(
    name: str,
    *,
    in_place: bool = False,
    crop: CropRule = "upper-centre",
    media: tuple[Media, ...] = ("videos",),
    published: Mapping[str, str] | None = None,
    results: Mapping[str, object] | None = None,
    options: type | None = None,
) -> Callable[[type[Protocol]], type[Protocol]]:
    """Class decorator: register a :class:`~maedfer.manifests.base.Protocol` under ``name``.

    The class gets ``name`` as its attribute and is instantiated once, without arguments.

    Raises:
        ValueError: a name registered twice or an unknown media kind (a programming error).
    """
    if not set(media) <= {"videos", "frames"} or not media:
        raise ValueError(f"register_dataset({name!r}): media {media!r} must be videos/frames")

    def decorate(cls: type[Protocol]) -> type[Protocol]:
        if name in _REGISTRY and _REGISTRY[name].module != cls.__module__:
            raise ValueError(f"dataset {name!r} registered twice ({_REGISTRY[name].module})")
        cls.name = name
        _REGISTRY[name] = DatasetInfo(
            name=name,
            protocol=cls(),
            in_place=in_place,
            crop=crop,
            media=tuple(media),
            published=MappingProxyType(dict(published or {})),
            results=None if results is None else MappingProxyType(dict(results)),
            options=options,
            module=cls.__module__,
        )
        return cls

    return decorate


def _load_all() -> None:
    """Import every protocol module of the package once (their decorators fill the registry)."""
    global _LOADED
    if _LOADED:
        return
    import maedfer.manifests as package

    for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
        if module not in _SHARED and not module.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module}")
    _LOADED = True


def list_datasets() -> list[str]:
    """Every registered dataset name, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def get_dataset(name: str) -> DatasetInfo:
    """The registry entry of ``name`` (case and ``_``/``-`` ignored).

    Raises:
        MaedferError: unknown name; the message lists the registered ones.
    """
    _load_all()
    info = _REGISTRY.get(_key(name))
    if info is None:
        raise MaedferError(
            f"unknown dataset {name!r}; expected one of: {', '.join(sorted(_REGISTRY))}"
        )
    return info


def datasets_with_option(option: str) -> list[str]:
    """The datasets whose own ``prepare`` options include ``option``, sorted."""
    from dataclasses import fields

    _load_all()
    return sorted(
        n
        for n, i in _REGISTRY.items()
        if i.options is not None and option in {f.name for f in fields(i.options)}
    )


def published_fingerprints(name: str) -> dict[str, str]:
    """The published fingerprints of ``name``; empty for unknown names and datasets without."""
    _load_all()
    info = _REGISTRY.get(_key(name))
    return dict(info.published) if info is not None else {}


__all__ = [
    "CropRule",
    "DatasetInfo",
    "datasets_with_option",
    "Media",
    "get_dataset",
    "list_datasets",
    "published_fingerprints",
    "register_dataset",
]

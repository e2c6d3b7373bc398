"""A third backend for the tests, added as the contract says: this module and a table row.

It decodes with PyAV but declares that it cannot run RandAugment, so a recipe asking for it must
be refused in one line naming the option and the backend.
"""

from __future__ import annotations

from maedfer.pipelines.pyav import PyAVBackend


class NoRandAugmentBackend(PyAVBackend):
    name = "norand"

    def unsupported(self, config):  # noqa: ANN001, ANN201
        if config.rand_augment:
            return {"rand_augment": "this backend has no RandAugment"}
        return {}


BACKEND = NoRandAugmentBackend()

"""Container images in and out of a store: ``docker save`` / OCI layout import, OCI export.

A layer of an image becomes the store layer whose id is its OCI chain id (hex, without
``sha256:``), so two images that share a base store it once.
"""

from __future__ import annotations

from aufs.errors import ImageError

__all__ = ["ImageError"]

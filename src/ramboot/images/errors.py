"""The one error an image build raises: already phrased as one line for the user."""

from __future__ import annotations


class ImageError(Exception):
    """A bad source, a missing tool, a kernel without the needed modules, a full disk."""

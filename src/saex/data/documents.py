"""The unit every corpus yields."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    """One document of a corpus."""

    key: str
    """Stable identifier, unique within its corpus (e.g. ``wiki:Photosynthesis``); the train / held-out
    split is decided by a hash of it, so it must not depend on iteration order."""
    text: str
    """The document's text, as the model will read it."""

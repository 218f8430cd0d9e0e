"""The model families as plug-ins (runtime.families.base): one file each, registered by name."""

from .base import FAMILIES, Family, FamilyHead, HeadParts, family, family_of
from .collavo import CoLLaVO, crayon_map_ids
from .moai import MoAI, colour_map_pixels, verbalized_text

__all__ = ["FAMILIES", "CoLLaVO", "Family", "FamilyHead", "HeadParts", "MoAI", "colour_map_pixels", "crayon_map_ids",
           "family", "family_of", "verbalized_text"]

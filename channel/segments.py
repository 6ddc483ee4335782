"""SMS segments of a text: GSM-7 (160, or 153 per part) or UCS-2 (70, or 67 per part).

The count is what providers bill, so an operator sees a message's cost before the
invoice. GSM-7 is the default alphabet of 3GPP TS 23.038 (section 6.2.1); characters of
its extension table take two septets (an escape, then the character). Any other
character makes the whole text UCS-2, where a character outside the Basic Multilingual
Plane (an emoji) takes two UTF-16 code units. A concatenated message gives up 7 septets
(6 octets) of each part to its header, and a part never splits an escape pair or a
surrogate pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
"""The default alphabet's 127 characters (0x1B, the escape, is not one of them)."""
GSM_EXTENSION = frozenset("\f^{}\\[~]|€")
"""The extension table: each takes two septets."""

GSM_SINGLE, GSM_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True)
class Segments:
    """How a text goes over the air: its encoding, its length in units, and its parts."""

    encoding: Encoding
    units: int
    """Septets (GSM-7) or UTF-16 code units (UCS-2)."""
    count: int


def segments(text: str) -> Segments:
    """The encoding and number of SMS segments ``text`` needs (0 for an empty text)."""
    if all(char in GSM_BASIC or char in GSM_EXTENSION for char in text):
        sizes = [2 if char in GSM_EXTENSION else 1 for char in text]
        return Segments("GSM-7", sum(sizes), _parts(sizes, GSM_SINGLE, GSM_PART))
    sizes = [2 if ord(char) > 0xFFFF else 1 for char in text]
    return Segments("UCS-2", sum(sizes), _parts(sizes, UCS2_SINGLE, UCS2_PART))


def _parts(sizes: list[int], single: int, part: int) -> int:
    """Parts for characters of ``sizes`` units: one up to ``single``, else ``part`` each.

    Filled greedily: a character that does not fit in what is left of a part starts
    the next one, as a phone could not join half an escape or surrogate pair.
    """
    total = sum(sizes)
    if total <= single:
        return 1 if total else 0
    count, used = 1, 0
    for size in sizes:
        if used + size > part:
            count, used = count + 1, 0
        used += size
    return count

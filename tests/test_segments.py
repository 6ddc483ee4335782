"""SMS segments: known vectors for GSM-7 and UCS-2, and the GSM 03.38 codec as an oracle."""

from __future__ import annotations

# gsm0338 registers the "gsm03.38" codec: the oracle of septet counts.
import gsm0338  # type: ignore[import-untyped]  # noqa: F401
import pytest
from hypothesis import given
from hypothesis import strategies as st

from channel.segments import GSM_BASIC, GSM_EXTENSION, Segments, segments
from tests.conftest import Call, Configure, answer_json
from tests.data import payload
from tests.fakes import FakeTwilio

EURO = "€"  # GSM-7 extension table: two septets
OGONEK = "ą"  # not GSM-7: the whole text becomes UCS-2
EMOJI = "\U0001f600"  # outside the BMP: two UTF-16 code units


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Segments("GSM-7", 0, 0)),
        ("a" * 160, Segments("GSM-7", 160, 1)),
        ("a" * 161, Segments("GSM-7", 161, 2)),
        ("a" * 306, Segments("GSM-7", 306, 2)),
        ("a" * 307, Segments("GSM-7", 307, 3)),
        ("Ça coûte 5€", Segments("UCS-2", 11, 1)),  # û is not GSM-7
        ("Ça côute 5{€}", Segments("UCS-2", 13, 1)),
        ("Çà l'hôtel", Segments("UCS-2", 10, 1)),
        ("Ça a été 5€ [ok]", Segments("GSM-7", 19, 1)),  # €, [ and ] count double
        (EURO * 80, Segments("GSM-7", 160, 1)),
        (EURO * 81, Segments("GSM-7", 162, 2)),
        # 152 + 2 + 152 = 306 septets would fit 2 parts of 153, but the escape pair
        # cannot straddle the first part's end: 3 parts.
        ("a" * 152 + EURO + "a" * 152, Segments("GSM-7", 306, 3)),
        ("a" * 153 + EURO + "a" * 151, Segments("GSM-7", 306, 2)),
        (OGONEK * 70, Segments("UCS-2", 70, 1)),
        (OGONEK * 71, Segments("UCS-2", 71, 2)),
        (OGONEK * 134, Segments("UCS-2", 134, 2)),
        (OGONEK * 135, Segments("UCS-2", 135, 3)),
        ("a" * 159 + OGONEK, Segments("UCS-2", 160, 3)),  # one letter turns it UCS-2
        (EMOJI * 35, Segments("UCS-2", 70, 1)),
        (EMOJI * 36, Segments("UCS-2", 72, 2)),
        # A surrogate pair cannot straddle a part's end either.
        (OGONEK * 66 + EMOJI + OGONEK * 66, Segments("UCS-2", 134, 3)),
        (OGONEK * 67 + EMOJI + OGONEK * 65, Segments("UCS-2", 134, 2)),
        ("ç", Segments("UCS-2", 1, 1)),  # only the capital Ç is in GSM-7
        ("\x1b", Segments("UCS-2", 1, 1)),  # the escape itself is no character
    ],
)
def test_known_vectors(text: str, expected: Segments) -> None:
    assert segments(text) == expected


def _encodable(char: str) -> bool:
    try:
        char.encode("gsm03.38")
    except UnicodeEncodeError:
        return False
    return char != "\x1b"


GSM_BY_CODEC = sorted(
    char
    for char in map(chr, range(0x2200))
    if not "\ud800" <= char <= "\udfff" and _encodable(char)
)


def test_the_alphabet_is_the_codecs() -> None:
    assert set(GSM_BY_CODEC) == GSM_BASIC | GSM_EXTENSION
    assert {char for char in GSM_BY_CODEC if len(char.encode("gsm03.38")) == 2} == GSM_EXTENSION


@given(st.text(alphabet=st.sampled_from(GSM_BY_CODEC), max_size=700))
def test_gsm_septets_are_what_the_codec_encodes(text: str) -> None:
    counted = segments(text)
    septets = len(text.encode("gsm03.38"))
    assert counted.encoding == "GSM-7"
    assert counted.units == septets
    if septets <= 160:
        assert counted.count == (1 if text else 0)
    else:  # at least the plain division, at most one part more per escape pair
        assert -(-septets // 153) <= counted.count <= -(-septets // 152)


@given(st.text(min_size=1, max_size=400).filter(lambda t: not all(map(_encodable, t))))
def test_ucs2_units_are_utf16_code_units(text: str) -> None:
    counted = segments(text)
    units = len(text.encode("utf-16-le", "surrogatepass")) // 2
    assert counted.encoding == "UCS-2"
    assert counted.units == units
    if units <= 70:
        assert counted.count == 1
    else:
        assert -(-units // 67) <= counted.count <= -(-units // 66)


# --- CHANNEL_MAX_SEGMENTS on the outbound path ------------------------------------------

LONG_TEXT = "Your appointment is confirmed. " * 11  # 341 septets: 3 GSM-7 segments


def test_a_text_over_max_segments_is_not_sent_without_a_provider_call(
    call: Call, twilio: FakeTwilio, configure: Configure, caplog: pytest.LogCaptureFixture
) -> None:
    twilio.accept()
    configure(CHANNEL_MAX_SEGMENTS="2")
    response = call("outbound", payload(Message={"text": LONG_TEXT}))
    assert response.status_code == 200
    assert answer_json(response)["Status"] == "NotSent"
    assert twilio.posts() == []
    logged = [r.getMessage() for r in caplog.records if r.name == "channel.service"]
    assert any("needs 3 GSM-7 segments; CHANNEL_MAX_SEGMENTS is 2" in line for line in logged)


def test_a_text_within_max_segments_is_sent(
    call: Call, twilio: FakeTwilio, configure: Configure
) -> None:
    twilio.accept()
    configure(CHANNEL_MAX_SEGMENTS="3")
    response = call("outbound", payload(Message={"text": LONG_TEXT}))
    assert answer_json(response)["Status"] == "Sent"
    assert [post.form["Body"] for post in twilio.posts()] == [LONG_TEXT]


def test_a_bad_max_segments_is_a_problem_in_health(call: Call, configure: Configure) -> None:
    configure(CHANNEL_MAX_SEGMENTS="0")
    response = call("health", method="GET")
    assert response.status_code == 503
    assert answer_json(response)["problems"] == [
        "CHANNEL_MAX_SEGMENTS must be a whole number from 1 to 50"
    ]

from __future__ import annotations

from tests.conftest import Call, answer_json
from tests.data import RECIPIENT, TEXT, payload
from tests.fakes import FakeTwilio


def test_twilio_send(call: Call, twilio: FakeTwilio) -> None:
    twilio.accept()
    response = call("outbound", payload())
    assert response.status_code == 200, response.get_body()
    assert answer_json(response)["Status"] == "Sent"
    (post,) = twilio.posts()
    assert post.form["To"] == RECIPIENT
    assert post.form["Body"] == TEXT

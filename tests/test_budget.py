"""The time budget of a call, and how it reaches the ledger's stores."""

from __future__ import annotations

from channel.budget import Budget, time_left


def test_a_budget_applies_to_store_calls_only_within_its_context() -> None:
    assert time_left(10.0) == 10.0  # no call's budget: the store's own bound
    outer = Budget(5.0)
    with outer.applied():
        assert 0 < time_left(10.0) <= 5.0
        with Budget(1.0).applied():  # a nested call has its own
            assert time_left(10.0) <= 1.0
        assert 1.0 < time_left(10.0) <= 5.0
        assert time_left(0.5) == 0.5  # never more than the store's own bound
    assert time_left(10.0) == 10.0


def test_keeping_a_reserve_ends_that_much_earlier() -> None:
    budget = Budget(4.0)
    share = budget.keeping(1.0)
    assert share.seconds == 3.0
    before = budget.remaining()  # read first: the share, read later, can only have less
    assert share.remaining() <= before - 1.0
    assert Budget(0.5).keeping(1.0).remaining() == 0.0

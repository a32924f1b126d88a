"""Delivery states (docs/delivery.md): a delivery only moves forward; terminal states never move."""

from __future__ import annotations

import itertools

import pytest

from mqttpush.models import DeliveryState as S
from mqttpush.models import advances

CHAIN = [S.ACCEPTED, S.QUEUED, S.PUBLISHED, S.ARRIVED, S.OPENED]
VENDOR_CHAIN = [S.ACCEPTED, S.QUEUED, S.FORWARDED, S.ARRIVED, S.DISMISSED]
TERMINAL = [S.EXPIRED, S.CANCELLED, S.FAILED, S.DROPPED]


@pytest.mark.parametrize("chain", [CHAIN, VENDOR_CHAIN])
def test_every_later_state_on_the_path_is_a_move_forward(chain: list[S]) -> None:
    for i, j in itertools.combinations(range(len(chain)), 2):
        assert advances(chain[i], chain[j]), (chain[i], chain[j])


@pytest.mark.parametrize("chain", [CHAIN, VENDOR_CHAIN])
def test_never_backwards(chain: list[S]) -> None:
    for i, j in itertools.combinations(range(len(chain)), 2):
        assert not advances(chain[j], chain[i]), (chain[j], chain[i])


@pytest.mark.parametrize("state", list(S))
def test_no_state_advances_to_itself(state: S) -> None:
    assert not advances(state, state)


@pytest.mark.parametrize(("current", "new"), list(itertools.product(TERMINAL, list(S))))
def test_terminal_states_never_move(current: S, new: S) -> None:
    assert not advances(current, new)


@pytest.mark.parametrize(("current", "new"), list(itertools.product([S.OPENED, S.DISMISSED], list(S))))
def test_opened_and_dismissed_are_final(current: S, new: S) -> None:
    assert not advances(current, new)


@pytest.mark.parametrize("new", [S.ARRIVED, S.OPENED, S.DISMISSED])
def test_receipts_advance_a_published_or_forwarded_delivery(new: S) -> None:
    assert advances(S.PUBLISHED, new)
    assert advances(S.FORWARDED, new)


@pytest.mark.parametrize("current", [S.ARRIVED, S.OPENED, S.DISMISSED])
def test_a_delivered_message_is_not_published_again(current: S) -> None:
    for earlier in (S.ACCEPTED, S.QUEUED, S.PUBLISHED, S.FORWARDED):
        assert not advances(current, earlier)

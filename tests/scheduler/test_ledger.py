"""The usage ledger: decay, charges, and what a group's charge does to its members' keys."""

from __future__ import annotations

import pytest

from gpuqueue.queue.config import UserLimits
from gpuqueue.scheduler.fairshare.ledger import UsageLedger


def ledger(groups=None) -> UsageLedger:
    weights = {"w4": UserLimits(weight=4.0)}
    return UsageLedger(3600.0, lambda name: weights.get(name, UserLimits()), lambda f: None, groups)


def test_usage_decays_by_half_life_and_keys_divide_by_weight():
    lg = ledger()
    a, b = lg.user("a"), lg.user("w4")
    lg.add(a, 2.0 * lg.scale(0))
    lg.add(b, 2.0 * lg.scale(0))
    assert lg.usage("a", 3600) == pytest.approx(1.0)
    assert a.share_key == pytest.approx(4 * b.share_key)  # the same usage, a quarter of the key
    assert lg.usage("nobody", 0) == 0.0


def test_a_refund_never_takes_usage_below_zero():
    lg = ledger()
    a = lg.user("a")
    lg.add(a, 1.0)
    lg.add(a, -5.0)
    assert a.scaled == 0.0


def test_renormalizing_keeps_the_usage_and_tells_the_policy():
    seen = []
    lg = UsageLedger(3600.0, lambda name: UserLimits(), seen.append)
    a = lg.user("a")
    lg.add(a, 3.0 * lg.scale(0))
    far = 3600.0 * 70  # 2**70: the scaled units are rebased before they overflow
    assert lg.usage("a", far) == pytest.approx(3.0 * 2.0 ** -70)  # 70 half-lives later
    assert lg.scale(far) == 1.0 and seen  # rebased to now, the policy told the factor
    assert lg.usage("a", far + 3600) == pytest.approx(3.0 * 2.0 ** -71)


def test_a_charge_in_a_group_moves_every_member():
    lg = ledger({"g": (2.0, True)})
    a, b, c = lg.user("a", "g"), lg.user("b", "g"), lg.user("c")  # c: a group of its own
    versions = (b.version, c.version)
    changed = lg.add(a, 4.0)
    assert {u.name for u in changed} == {"a", "b"} and b.version > versions[0] and c.version == versions[1]
    assert b.share_key == (pytest.approx(2.0), 0.0)  # the group's 4 units over weight 2, then b's own
    assert c.share_key == (0.0, 0.0)
    assert lg.group_usage(b, 0) == pytest.approx(4.0)

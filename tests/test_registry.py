"""The registry: unique names, limits, and one order for every broadcast."""

from __future__ import annotations

import threading

import pytest

from common.codec import AlreadyRegistered, NameTaken, ServerFull
from common.registry import Registry


class Member:
    """A stand-in session that records what was queued to it."""

    def __init__(self) -> None:
        self.got: list[str] = []


def test_join_find_rename_leave() -> None:
    registry: Registry[Member] = Registry(max_users=10)
    alice, bob = Member(), Member()
    greeted: list[list[str]] = []
    assert registry.join("alice", alice, greeted.append) == ["alice"]
    assert registry.join("Bob", bob) == ["alice", "Bob"]
    assert greeted == [["alice"]]
    assert registry.find("BOB") == (bob, "Bob")
    assert registry.find("carol") is None
    assert registry.rename(bob, "carol") == "Bob"
    assert registry.names() == ["alice", "carol"]
    assert registry.name_of(bob) == "carol"
    assert registry.leave(bob) == "carol"
    assert registry.leave(bob) is None
    assert len(registry) == 1
    assert registry.members() == [alice]


def test_names_are_unique_without_case_and_width() -> None:
    registry: Registry[Member] = Registry(max_users=10)
    alice = Member()
    registry.join("alice", alice)
    for taken in ("alice", "ALICE", "ａｌｉｃｅ"):
        with pytest.raises(NameTaken):
            registry.join(taken, Member())
    with pytest.raises(AlreadyRegistered):
        registry.join("other", alice)
    assert registry.rename(alice, "Alice") == "alice"
    other = Member()
    registry.join("bob", other)
    with pytest.raises(NameTaken):
        registry.rename(other, "ALICE")
    assert registry.names() == ["Alice", "bob"]


def test_a_full_registry_refuses_and_frees_a_place_on_leave() -> None:
    registry: Registry[Member] = Registry(max_users=2)
    first = Member()
    registry.join("a", first)
    registry.join("b", Member())
    with pytest.raises(ServerFull):
        registry.join("c", Member())
    registry.leave(first)
    registry.join("c", Member())


def test_concurrent_fan_outs_reach_everyone_in_one_order() -> None:
    registry: Registry[Member] = Registry(max_users=100)
    members = [Member() for _ in range(20)]
    for i, member in enumerate(members):
        registry.join(f"m{i}", member)
    start = threading.Barrier(8)

    def speaker(k: int) -> None:
        start.wait()
        for n in range(200):
            text = f"{k}:{n}"

            def deliver(member: Member, text: str = text) -> None:
                member.got.append(text)

            registry.fan_out(deliver)

    threads = [threading.Thread(target=speaker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(members[0].got) == 1600
    assert all(member.got == members[0].got for member in members)


def test_fan_out_can_leave_out_one_member() -> None:
    registry: Registry[Member] = Registry(max_users=3)
    a, b = Member(), Member()
    registry.join("a", a)
    registry.join("b", b)
    registry.fan_out(lambda m: m.got.append("x"), exclude=a)
    assert (a.got, b.got) == ([], ["x"])

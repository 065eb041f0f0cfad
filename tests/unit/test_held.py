"""HeldMessages: the spool's count and oldest creation time, kept without scanning."""

from __future__ import annotations

import random

from engine.storage.held import HeldMessages


def test_empty_has_no_oldest():
    """Nothing held: count 0 and no oldest."""
    held = HeldMessages()
    assert (len(held), held.oldest()) == (0, None)


def test_oldest_is_the_earliest_created_not_the_first_added():
    """The oldest is by creation time: a retried old message added after newer ones."""
    held = HeldMessages([("b", 20.0), ("c", 30.0)])
    held.add("a", 10.0)
    assert (len(held), held.oldest()) == (3, 10.0)


def test_discarding_the_oldest_moves_to_the_next():
    """Once the oldest is disposed of, the next oldest is reported; then none."""
    held = HeldMessages([("a", 10.0), ("b", 20.0)])
    held.discard(["a"])
    assert (len(held), held.oldest()) == (1, 20.0)
    held.discard(["b"])
    assert (len(held), held.oldest()) == (0, None)


def test_unknown_and_repeated_ids_leave_the_count_alone():
    """Discarding an id not held, or adding a held id again, changes nothing."""
    held = HeldMessages([("a", 10.0)])
    held.discard(["zzz"])
    held.add("a", 5.0)
    assert (len(held), held.oldest()) == (1, 10.0)


def test_matches_a_scan_under_random_adds_and_discards():
    """Against a plain dict and min(): the same count and oldest after every step."""
    rng = random.Random(7)
    held, model = HeldMessages(), {}
    for step in range(20_000):
        if model and rng.random() < 0.5:
            gone = rng.sample(sorted(model), k=min(len(model), rng.randint(1, 5)))
            held.discard(gone)
            for id in gone:
                del model[id]
        else:
            id, created = f"m{step}", rng.uniform(0, 1000)
            held.add(id, created)
            model[id] = created
        assert len(held) == len(model)
        assert held.oldest() == (min(model.values()) if model else None)


def test_one_message_held_for_long_does_not_pin_every_later_entry():
    """An old message that stays while 100,000 others come and go keeps the heap small
    (stale entries are compacted), and it is still the oldest."""
    held = HeldMessages([("old", 0.0)])
    biggest = 0
    for n in range(100_000):
        held.add(f"m{n}", 1.0 + n)
        held.discard([f"m{n}"])
        biggest = max(biggest, len(held._heap))
    assert biggest <= 2 * 1 + 1024 + 1
    assert (len(held), held.oldest()) == (1, 0.0)

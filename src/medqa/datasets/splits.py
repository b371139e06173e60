"""Seeded, order-independent selection: a permutation and a disjoint train / held-out split by id."""

from __future__ import annotations

import hashlib
from collections import Counter

from medqa.datasets.record import MCQRecord
from medqa.errors import DataError


def hash_order(records: list[MCQRecord], seed: int) -> list[MCQRecord]:
    """A seeded, order-independent permutation: sort by sha256(seed:id)."""
    return sorted(records, key=lambda r: hashlib.sha256(f"{seed}:{r.id}".encode()).hexdigest())


def split_train_heldout(records: list[MCQRecord], train_size: int, seed: int) -> tuple[list[MCQRecord], list[MCQRecord]]:
    """Deterministic disjoint split by a hash of `id`: `train_size` rows for training, the rest held out."""
    ids = Counter(r.id for r in records)
    dup = [i for i, c in ids.items() if c > 1]
    if dup:
        raise DataError("split", None, "id", f"{len(dup)} duplicate ids (e.g. {dup[0]!r}); a hash split needs unique ids")
    if train_size >= len(records):
        raise DataError("split", None, None, f"train_size {train_size} leaves nothing held out of {len(records)} rows")
    ordered = hash_order(records, seed)
    return ordered[:train_size], ordered[train_size:]

"""Merge the replicas' answers back into one list: replicas are read in rank order and the
result is ordered by global index. With contiguous shards that is rank order, then index (rank 0
holds the lowest indices); after dynamic sharding or a re-run the index order still holds.

Never zip-and-hope: a missing or duplicated index is an error that names the indices.

    python -c "from evaluator.collector import merge; print(merge({1: [(3, 'b')], 0: [(2, 'a')]}, [2, 3]))"
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, TypeVar

T = TypeVar("T")


class CollectError(RuntimeError):
    """The replicas' outputs do not cover the prompts exactly once."""


def _short(indices: Iterable[int]) -> str:
    items = sorted(indices)
    text = ", ".join(map(str, items[:10]))
    return text + (f" ... ({len(items)} in all)" if len(items) > 10 else "")


def merge(by_rank: Mapping[int, Iterable[tuple[int, T]]], expected: Iterable[int]) -> list[tuple[int, int, T]]:
    """by_rank: {rank: [(index, item), ...]} in any order -> [(rank, index, item)] sorted by
    index. Raises CollectError unless every expected index appears exactly once."""
    rows = [(rank, index, item) for rank in sorted(by_rank) for index, item in by_rank[rank]]
    counts = Counter(index for _, index, _ in rows)
    expected_set = set(expected)
    duplicated = [i for i, c in counts.items() if c > 1]
    missing = expected_set - counts.keys()
    unexpected = counts.keys() - expected_set
    if duplicated:
        raise CollectError(f"duplicated prompt indices: {_short(duplicated)}")
    if missing:
        raise CollectError(f"missing prompt indices: {_short(missing)}")
    if unexpected:
        raise CollectError(f"indices that were never asked for: {_short(unexpected)}")
    rows.sort(key=lambda r: r[1])
    return rows

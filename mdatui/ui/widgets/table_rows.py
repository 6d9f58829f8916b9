"""Which of many rows a SortableTable shows: those a filter lets through, the first MAX_ROWS of
them in a column's order.

Views give all their rows as a `Rows`: columns of numbers, one value per row (numpy arrays), that
sort and filter a few hundred thousand rows in milliseconds. Only the rows picked here become
objects and cells, so a refresh costs about the same for 100 rows as for 200,000.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from rich.text import Text

T = TypeVar("T")

# Rows the table shows: two screens' worth. Each is an object and a dozen cells made in Python
# (some 50 µs a row). Past this many rows, filter (the summary lines say how many more match).
MAX_ROWS = 100


class Rows(Protocol[T]):
    """All rows of a table as its columns see them."""

    def __len__(self) -> int: ...

    def tiebreak(self, rows: np.ndarray) -> Sequence[np.ndarray]:
        """Sort keys of these rows for where a column holds equal values, least significant
        first (as numpy.lexsort takes them): rows must not hop about from one refresh to the
        next."""

    def item(self, row: int) -> T:
        """The object a shown row is made from."""


@dataclass(frozen=True)
class Column(Generic[T]):
    key: str
    label: str
    text: Callable[[T], str | Text]              # the cell of a shown row
    order: Callable[[Any], np.ndarray]            # a sort value per row of the Rows; none: largest
    search: Callable[[Any, str], np.ndarray] | None = None  # rows whose cell holds a casefolded
    numeric: bool = False                                    # needle; None: the filter skips it
    width: int | None = None

    def render(self, item: T) -> Text:
        shown = self.text(item)
        if isinstance(shown, Text):
            return shown
        # Text rather than str: the table parses no markup (a command may hold brackets).
        return Text(shown, justify="right" if self.numeric else None)


def matching(rows: Rows[T], columns: Sequence[Column[T]], needle: str) -> np.ndarray:
    """The rows whose cell holds needle (casefolded) in any column that can be searched; all
    rows for no needle."""
    if not needle:
        return np.arange(len(rows))
    mask = np.zeros(len(rows), dtype=bool)
    for c in columns:
        if c.search is not None:
            mask |= c.search(rows, needle)
    return np.flatnonzero(mask)


def first_rows(rows: Rows[T], found: np.ndarray, value: np.ndarray, reverse: bool) -> np.ndarray:
    """The first MAX_ROWS of the found rows by value (a sort value per row of rows), ties in the
    rows' tiebreak order. Rows that cannot be among them are left out before the sort: a
    partition finds the boundary value in linear time."""
    if len(found) < len(rows):
        value = value[found]
    if len(found) > MAX_ROWS:
        found, value = _contenders(rows, found, value, reverse)
    order = np.lexsort([*rows.tiebreak(found), value])
    if reverse:
        order = order[::-1]
    return found[order[:MAX_ROWS]]


def _contenders(rows: Rows[T], found: np.ndarray, value: np.ndarray,
                reverse: bool) -> tuple[np.ndarray, np.ndarray]:
    """The found rows that can be among the first MAX_ROWS, and their values: those before
    the value at that place, and of the rows that hold it, those that can come first by the
    tiebreak's most significant key (a column of a few states ties on all rows)."""
    def first(values: np.ndarray, n: int) -> np.ndarray:
        at = len(values) - n if reverse else n - 1
        bound = _nth_smallest(values, at)
        return (values >= bound if reverse else values <= bound), bound
    near, bound = first(value, MAX_ROWS)
    tied = np.flatnonzero(value == bound)
    ahead = np.flatnonzero(near & (value != bound))
    need = MAX_ROWS - len(ahead)
    if len(tied) > need:
        major = rows.tiebreak(found[tied])[-1]
        tied = tied[first(major, need)[0]]
    keep = np.concatenate([ahead, tied])
    return found[keep], value[keep]


def _nth_smallest(values: np.ndarray, at: int):
    """values[at] of values sorted. numpy's partition takes 10-20 times longer when many values
    are equal (25 ms at 200,000 rates of 0, a sort 1-2 ms); with few equal it is the faster."""
    sample = values[::max(1, len(values) // 1024)]
    if 8 * np.unique(sample, return_counts=True)[1].max(initial=0) > len(sample):
        return np.sort(values)[at]
    return np.partition(values, at)[at]

"""Columns laid out for a width, the live view's way: numbers are never cut, names fold.

rich's `Table` shrinks every column alike when the terminal is narrow, so in 80 columns the
counts became ellipses. Here a number column always gets its full width; when the row is still
too wide, headers get their short form and then the widest name column is folded onto more
lines (every character kept). Free text (an error) is not a column: the caller gives it what
is left of the line, or a line of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len, chop_cells
from rich.text import Text

__all__ = ["Column", "layout"]

_GAP = 2
_NARROWEST_NAME = 8


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its header, a shorter header for narrow terminals, and how it gives way."""

    header: str
    short: str = ""  # the header when space is short; "" keeps `header`
    numeric: bool = False  # right-aligned
    foldable: bool = False  # a name: folded onto more lines when space is short


def layout(columns: Sequence[Column], rows: Sequence[Sequence[Text]], width: int) -> tuple[Text, list[list[Text]]]:
    """The header line and each row's lines (more than one where a name folds), every line at
    most `width` cells where that can be done without cutting a number."""
    headers = [column.header for column in columns]
    widths = _natural(headers, rows)
    if _total(widths) > width:
        headers = [column.short or column.header for column in columns]
        widths = _natural(headers, rows)
    _fold_names(columns, headers, widths, width)
    header = _line(columns, [[Text(header, style="bold")] for header in headers], widths)
    laid = []
    for row in rows:
        cells = [
            _fold(cell, w) if column.foldable else [cell] for column, cell, w in zip(columns, row, widths, strict=True)
        ]
        height = max(len(parts) for parts in cells)
        laid.append([_line(columns, [parts[i : i + 1] for parts in cells], widths) for i in range(height)])
    return header, laid


def _natural(headers: Sequence[str], rows: Sequence[Sequence[Text]]) -> list[int]:
    return [max([cell_len(header), *(row[i].cell_len for row in rows)]) for i, header in enumerate(headers)]


def _total(widths: Sequence[int]) -> int:
    return sum(widths) + _GAP * (len(widths) - 1)


def _fold_names(columns: Sequence[Column], headers: Sequence[str], widths: list[int], width: int) -> None:
    """Narrow the widest name column, one cell at a time, until the row fits or cannot narrow."""
    floors = [max(_NARROWEST_NAME, cell_len(header)) for header in headers]
    excess = _total(widths) - width
    while excess > 0:
        narrowable = [i for i, c in enumerate(columns) if c.foldable and widths[i] > floors[i]]
        if not narrowable:
            return
        widest = max(narrowable, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1


def _fold(cell: Text, width: int) -> list[Text]:
    if cell.cell_len <= width:
        return [cell]
    offsets, at = [], 0
    for chunk in chop_cells(cell.plain, width)[:-1]:
        at += len(chunk)
        offsets.append(at)
    return list(cell.divide(offsets))


def _line(columns: Sequence[Column], cells: Sequence[Sequence[Text]], widths: Sequence[int]) -> Text:
    parts = []
    for column, part, width in zip(columns, cells, widths, strict=True):
        text = part[0].copy() if part else Text()
        text.align("right" if column.numeric else "left", width)
        parts.append(text)
    line = Text(" " * _GAP).join(parts)
    line.rstrip()
    line.no_wrap, line.overflow = True, "ellipsis"
    return line

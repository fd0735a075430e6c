"""RFC 9110 14 byte ranges: one `bytes=` range of a representation of known size, as the door and the pool
server answer it (several ranges, or another unit, are answered with the whole representation)."""

from __future__ import annotations

from headrace.errors import RangeNotSatisfiable


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """(start, length) for a single `bytes=` range; None to ignore it (multiple ranges, other units).
    Raises RangeNotSatisfiable for a range outside the file."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                raise RangeNotSatisfiable(f"Range {value} is empty")
            start = max(0, size - n)
            end = size - 1
        else:
            start = int(first)
            end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or (last and end < start):  # an invalid range-spec is ignored (RFC 9110 14.1.1)
        return None
    if start >= size:  # includes `bytes=N-` with N = size, and every range of an empty file
        raise RangeNotSatisfiable(f"Range {value} starts beyond the end of the file ({size} bytes)")
    end = min(end, size - 1)
    return start, end - start + 1


def answer_range(value: str | None, size: int, headers: dict[str, str]) -> tuple[int, int, int]:
    """(start, length, status) of a read answering the Range header `value` (None: absent, or not honoured
    because If-Range failed): 206 and Content-Range for one satisfiable range, else 200 and the whole file.
    Sets Content-Length in `headers`; raises RangeNotSatisfiable (416) for a range outside the file."""
    parsed = parse_range(value, size) if value else None
    if parsed is None:
        headers["Content-Length"] = str(size)
        return 0, size, 200
    start, length = parsed
    headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
    headers["Content-Length"] = str(length)
    return start, length, 206


def unsatisfiable_headers(size: int) -> dict[str, str]:
    """What a 416 carries: the representation's size."""
    return {"Content-Range": f"bytes */{size}"}

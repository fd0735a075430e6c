"""headrace.http.ranges: one `bytes=` range of a representation of known size."""

from __future__ import annotations

import pytest

from headrace.errors import RangeNotSatisfiable
from headrace.http.ranges import answer_range, parse_range, unsatisfiable_headers


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=0-9", (0, 10)),
        ("bytes=10-", (10, 90)),
        ("bytes=-10", (90, 10)),
        ("bytes=-1000", (0, 100)),
        ("bytes=90-1000", (90, 10)),
        ("BYTES = 5-5", (5, 1)),
        ("bytes=0-9,20-29", None),  # several ranges: the whole representation
        ("items=0-9", None),
        ("bytes=9-0", None),
        ("bytes=a-b", None),
        ("bytes=5", None),
        ("bytes=-x", None),
    ],
)
def test_parse_range(value: str, expected: tuple[int, int] | None) -> None:
    assert parse_range(value, 100) == expected


@pytest.mark.parametrize("value", ["bytes=100-150", "bytes=200-300", "bytes=-0", "bytes=100-", "bytes=150-"])
def test_unsatisfiable(value: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(value, 100)
    assert unsatisfiable_headers(100) == {"Content-Range": "bytes */100"}


def test_nothing_of_an_empty_representation_is_satisfiable() -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=0-", 0)


def test_answer_range_sets_the_headers() -> None:
    headers: dict[str, str] = {}
    assert answer_range("bytes=10-19", 100, headers) == (10, 10, 206)
    assert headers == {"Content-Range": "bytes 10-19/100", "Content-Length": "10"}
    headers = {}
    assert answer_range(None, 100, headers) == (0, 100, 200)
    assert headers == {"Content-Length": "100"}
    headers = {}
    assert answer_range("bytes=0-1,5-6", 0, headers) == (0, 0, 200)
    assert headers == {"Content-Length": "0"}

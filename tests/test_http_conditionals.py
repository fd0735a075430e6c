"""headrace.http.conditionals: RFC 9110 section 13, as pure functions of header values and validators."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from headrace.errors import PreconditionFailed
from headrace.http.conditionals import (
    check_read,
    entity_tags,
    if_match_holds,
    if_none_match_holds,
    if_range_holds,
    parse_http_date,
    strong_match,
    weak_match,
)

ETAG = '"0000A1_3"'
MTIME = 1_700_000_000
DATE = formatdate(MTIME, usegmt=True)
EARLIER = formatdate(MTIME - 60, usegmt=True)
LATER = formatdate(MTIME + 60, usegmt=True)


def read(**headers: str | None) -> bool:
    conds = {k: headers.get(k) for k in ("if_match", "if_unmodified_since", "if_none_match", "if_modified_since")}
    return check_read(ETAG, MTIME, **conds)


def test_comparison_functions_follow_rfc_9110_8_8_3_2() -> None:
    # The table of RFC 9110 8.8.3.2.
    assert not strong_match('W/"1"', 'W/"1"') and weak_match('W/"1"', 'W/"1"')
    assert not strong_match('W/"1"', 'W/"2"') and not weak_match('W/"1"', 'W/"2"')
    assert not strong_match('W/"1"', '"1"') and weak_match('W/"1"', '"1"')
    assert strong_match('"1"', '"1"') and weak_match('"1"', '"1"')


def test_entity_tag_lists() -> None:
    assert entity_tags(' "a" , W/"b",,') == ['"a"', 'W/"b"']


def test_if_match_compares_strongly() -> None:
    assert if_match_holds(ETAG, ETAG)
    assert if_match_holds(f'"other", {ETAG}', ETAG)
    assert if_match_holds("*", ETAG)
    assert not if_match_holds(f"W/{ETAG}", ETAG)  # a weak tag never matches If-Match
    assert not if_match_holds('"other"', ETAG)
    assert not if_match_holds("*", None)  # no current representation


def test_if_none_match_compares_weakly() -> None:
    assert not if_none_match_holds(ETAG, ETAG)
    assert not if_none_match_holds(f"W/{ETAG}", ETAG)
    assert not if_none_match_holds("*", ETAG)
    assert if_none_match_holds('"other"', ETAG)
    assert if_none_match_holds("*", None)


def test_read_preconditions() -> None:
    assert read() is False
    assert read(if_match=ETAG) is False
    with pytest.raises(PreconditionFailed):
        read(if_match=f"W/{ETAG}")
    with pytest.raises(PreconditionFailed):
        read(if_unmodified_since=EARLIER)
    assert read(if_unmodified_since=DATE) is False
    # If-Unmodified-Since is ignored when If-Match is present (RFC 9110 13.2.2 step 2).
    assert read(if_match=ETAG, if_unmodified_since=EARLIER) is False
    assert read(if_unmodified_since="not a date") is False
    assert read(if_none_match=ETAG) is True
    assert read(if_none_match=f"W/{ETAG}") is True
    assert read(if_none_match='"other"') is False
    assert read(if_modified_since=DATE) is True
    assert read(if_modified_since=LATER) is True
    assert read(if_modified_since=EARLIER) is False
    # If-Modified-Since is ignored when If-None-Match is present.
    assert read(if_none_match='"other"', if_modified_since=LATER) is False


def test_if_range_with_an_entity_tag_compares_strongly() -> None:
    assert if_range_holds(None, ETAG, MTIME)
    assert if_range_holds("", ETAG, MTIME)
    assert if_range_holds(ETAG, ETAG, MTIME)
    assert not if_range_holds(f"W/{ETAG}", ETAG, MTIME)
    assert not if_range_holds('"other"', ETAG, MTIME)
    assert not if_range_holds(ETAG, None, MTIME)


def test_if_range_with_a_date_must_match_exactly() -> None:
    assert if_range_holds(DATE, ETAG, MTIME)
    assert not if_range_holds(LATER, ETAG, MTIME)  # a later date once passed: it is not the validator
    assert not if_range_holds(EARLIER, ETAG, MTIME)
    assert not if_range_holds(DATE, ETAG, None)
    assert not if_range_holds("garbage", ETAG, MTIME)


def test_http_dates() -> None:
    assert parse_http_date(DATE) == MTIME
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777  # RFC 850 form
    for bad in ("", "yesterday", "Mon, 99 Foo 2020 99:99:99 GMT"):
        assert parse_http_date(bad) is None

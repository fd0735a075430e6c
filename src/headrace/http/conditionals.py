"""RFC 9110 section 13 conditional requests, as pure functions of the header values and a resource's
validators (its entity tag and its modification time in whole seconds).

If-Match and If-Range compare entity tags strongly (a weak tag never matches); If-None-Match compares them
weakly. An If-Range date holds only when it is exactly the resource's Last-Modified.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from headrace.errors import PreconditionFailed


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch of an HTTP date; None if it is not one (a condition on it is then ignored)."""
    try:
        return int(parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def entity_tags(value: str) -> list[str]:
    """The entity tags of a list header (If-Match, If-None-Match), as sent (a weak one keeps its W/)."""
    return [t.strip() for t in value.split(",") if t.strip()]


def is_weak(tag: str) -> bool:
    return tag.startswith("W/")


def strong_match(tag: str, etag: str) -> bool:
    """RFC 9110 8.8.3.2 strong comparison: both tags strong and identical."""
    return not is_weak(tag) and not is_weak(etag) and tag == etag


def weak_match(tag: str, etag: str) -> bool:
    """RFC 9110 8.8.3.2 weak comparison: identical opaque tags, weak or not."""
    return tag.removeprefix("W/") == etag.removeprefix("W/")


def if_match_holds(value: str, etag: str | None) -> bool:
    """If-Match: `*` holds for any existing resource (etag not None); a list holds if one tag matches strongly."""
    if etag is None:
        return False
    if value.strip() == "*":
        return True
    return any(strong_match(t, etag) for t in entity_tags(value))


def if_none_match_holds(value: str, etag: str | None) -> bool:
    """If-None-Match holds (the request proceeds) unless `*` names an existing resource or a tag matches weakly."""
    if etag is None:
        return True
    if value.strip() == "*":
        return False
    return not any(weak_match(t, etag) for t in entity_tags(value))


def check_read(
    etag: str,
    mtime: int,
    *,
    if_match: str | None,
    if_unmodified_since: str | None,
    if_none_match: str | None,
    if_modified_since: str | None,
) -> bool:
    """RFC 9110 13.2.2 for a GET/HEAD of an existing resource (`mtime` in whole seconds): raises
    PreconditionFailed (412), or returns True when the answer is 304 Not Modified."""
    if if_match:
        if not if_match_holds(if_match, etag):
            raise PreconditionFailed("If-Match does not match the current ETag")
    elif if_unmodified_since:
        t = parse_http_date(if_unmodified_since)
        if t is not None and mtime > t:
            raise PreconditionFailed("Modified since If-Unmodified-Since")
    if if_none_match:
        return not if_none_match_holds(if_none_match, etag)
    if if_modified_since:
        t = parse_http_date(if_modified_since)
        return t is not None and mtime <= t
    return False


def if_range_holds(value: str | None, etag: str | None, mtime: int | None) -> bool:
    """Whether a Range is honoured under If-Range `value` (RFC 9110 13.1.5): absent, or an entity tag equal to
    `etag` by strong comparison, or an HTTP date exactly `mtime` (whole seconds). Otherwise the whole
    representation is sent."""
    if not value:
        return True
    value = value.strip()
    if value.startswith('"') or is_weak(value):
        return etag is not None and strong_match(value, etag)
    t = parse_http_date(value)
    return t is not None and mtime is not None and t == mtime

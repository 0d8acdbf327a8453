"""The preference centre: what a customer said about being contacted, validated, and as the
arrays the decisioning core reads.

A customer's preferences (`PUT /customers/{id}/preferences`, one JSON object):

    consent       {channel: true | false}   overrides the consent features of that channel
                                            (false: the channel is filtered, stage consent)
    frequency     {channel: {count, days}}  at most `count` contacts on the channel per `days`
    quiet_hours   {start: "HH:MM", end: "HH:MM"} in `timezone`; start > end wraps midnight:
                                            no outbound contact inside
    timezone      an IANA zone name (default UTC)
    topics_blocked [issue or group, ...]    messages the customer does not want

Each is honoured from the next decision on (`nba.serving.engine` reads the store on every
decision). Errors name the field, the value and what was expected (`PreferenceError`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nba.catalog import ISSUES, Catalog
from nba.decisioning.core import Preferences, catalog_issues
from nba.errors import NbaError

_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
MAX_COUNT = 1_000_000  # contacts in a frequency limit (the core holds them as int64 arrays)
MAX_DAYS = 36_500  # days of a frequency limit's window
FIELDS = ("consent", "frequency", "quiet_hours", "timezone", "topics_blocked")


class PreferenceError(NbaError):
    """A preference payload the centre cannot take; `field` names the offending field."""

    def __init__(self, message: str, *, field: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class CustomerPreferences:
    consent: Mapping[str, bool] = field(default_factory=dict)
    frequency: Mapping[str, tuple[int, float]] = field(default_factory=dict)  # channel -> (count, days)
    quiet_hours: tuple[int, int] | None = None  # minutes after midnight, local time
    timezone: str = "UTC"
    topics_blocked: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        def hhmm(m: int) -> str:
            return f"{m // 60:02d}:{m % 60:02d}"

        return {"consent": dict(self.consent),
                "frequency": {c: {"count": n, "days": d} for c, (n, d) in self.frequency.items()},
                "quiet_hours": None if self.quiet_hours is None else
                {"start": hhmm(self.quiet_hours[0]), "end": hhmm(self.quiet_hours[1])},
                "timezone": self.timezone, "topics_blocked": list(self.topics_blocked)}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def _minutes(value: Any, where: str) -> int:
    m = _TIME.match(value) if isinstance(value, str) else None
    if m is None:
        raise PreferenceError(f"{where} = {value!r}: expected a time HH:MM (00:00 to 23:59)", field=where)
    return int(m.group(1)) * 60 + int(m.group(2))


def parse(payload: Any, catalog: Catalog) -> CustomerPreferences:
    """Validate a payload against the catalog's channels, issues and groups."""
    if not isinstance(payload, Mapping):
        raise PreferenceError(f"preferences: expected a JSON object, got {type(payload).__name__}", field="body")
    unknown = [k for k in payload if k not in FIELDS]
    if unknown:
        raise PreferenceError(f"unknown field '{unknown[0]}'; expected any of {', '.join(FIELDS)}", field=unknown[0])
    channels = catalog.channel_names

    def channel_map(name: str) -> Mapping[str, Any]:
        value = payload.get(name) or {}
        if not isinstance(value, Mapping):
            raise PreferenceError(f"{name}: expected an object of channel -> value", field=name)
        for c in value:
            if c not in channels:
                raise PreferenceError(f"{name}.{c}: '{c}' is not a channel; expected one of {', '.join(channels)}",
                                      field=f"{name}.{c}")
        return value

    consent: dict[str, bool] = {}
    for c, v in channel_map("consent").items():
        if not isinstance(v, bool):
            raise PreferenceError(f"consent.{c} = {v!r}: expected true or false", field=f"consent.{c}")
        consent[c] = v
    frequency: dict[str, tuple[int, float]] = {}
    for c, v in channel_map("frequency").items():
        where = f"frequency.{c}"
        if not isinstance(v, Mapping) or set(v) - {"count", "days"} or "count" not in v:
            raise PreferenceError(f"{where} = {v!r}: expected {{\"count\": n, \"days\": d}}", field=where)
        count, days = v["count"], v.get("days", 30)
        if isinstance(count, float) and count.is_integer():  # 3.0 is an integer in JSON (and its schemas)
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
            raise PreferenceError(f"{where}.count = {count!r}: expected a whole number >= 0 and at most {MAX_COUNT:,}",
                                  field=f"{where}.count")
        if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= MAX_DAYS:
            raise PreferenceError(f"{where}.days = {days!r}: expected a number of days > 0 and at most {MAX_DAYS:,}",
                                  field=f"{where}.days")
        frequency[c] = (int(count), float(days))
    quiet = payload.get("quiet_hours")
    quiet_hours = None
    if quiet is not None:
        if not isinstance(quiet, Mapping) or set(quiet) != {"start", "end"}:
            raise PreferenceError(f"quiet_hours = {quiet!r}: expected {{\"start\": \"HH:MM\", \"end\": \"HH:MM\"}}",
                                  field="quiet_hours")
        start, end = _minutes(quiet["start"], "quiet_hours.start"), _minutes(quiet["end"], "quiet_hours.end")
        if start == end:
            raise PreferenceError(f"quiet_hours: start and end are both {quiet['start']}: an empty range",
                                  field="quiet_hours.end")
        quiet_hours = (start, end)
    tz = payload.get("timezone", "UTC")
    try:
        from zoneinfo import ZoneInfo

        if not isinstance(tz, str) or not tz:
            raise ValueError(tz)
        ZoneInfo(tz)
    except Exception:
        raise PreferenceError(f"timezone = {tz!r}: expected an IANA time zone name such as Europe/Amsterdam",
                              field="timezone") from None
    topics = payload.get("topics_blocked") or []
    # every issue the catalog may use (an action of it may come later) and the catalog's groups
    known = tuple(dict.fromkeys((*ISSUES, *catalog_issues(catalog), *catalog.groups)))
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise PreferenceError(f"topics_blocked = {topics!r}: expected a list of issues or groups", field="topics_blocked")
    for t in topics:
        if t not in known:
            raise PreferenceError(f"topics_blocked: '{t}' is not an issue or group of the catalog; expected any of "
                                  f"{', '.join(known)}", field="topics_blocked")
    return CustomerPreferences(consent, frequency, quiet_hours, tz, tuple(dict.fromkeys(topics)))


def loads(text: str, catalog: Catalog) -> CustomerPreferences:
    return parse(json.loads(text), catalog)


def consent_feature(channel: str) -> str:
    """The consent feature a channel's consent overrides (`consent_<channel>`)."""
    return f"consent_{channel}"


def to_arrays(catalog: Catalog, prefs: Sequence[CustomerPreferences | None], now: np.ndarray) -> Preferences | None:
    """The core's arrays for the customers of a call (None when no customer has any)."""
    if not any(p is not None for p in prefs):
        return None
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    n = len(prefs)
    out = Preferences.none(catalog, n)
    cidx = {c: i for i, c in enumerate(catalog.channel_names)}
    iidx = {s: i for i, s in enumerate(catalog_issues(catalog))}
    gidx = {g: i for i, g in enumerate(catalog.groups)}
    for row, p in enumerate(prefs):
        if p is None:
            continue
        for c, ok in p.consent.items():
            if c in cidx:
                out.consent[row, cidx[c]] = int(ok)
        for c, (count, days) in p.frequency.items():
            if c in cidx:
                out.cap_count[row, cidx[c]] = count
                out.cap_days[row, cidx[c]] = days
        if p.quiet_hours is not None:
            local = datetime.fromtimestamp(float(now[row]), tz=UTC).astimezone(ZoneInfo(p.timezone))
            out.quiet_start[row], out.quiet_end[row] = p.quiet_hours
            out.local_minute[row] = local.hour * 60 + local.minute
        for t in p.topics_blocked:
            if t in iidx:
                out.no_issue[row, iidx[t]] = True
            if t in gidx:
                out.no_group[row, gidx[t]] = True
    return out

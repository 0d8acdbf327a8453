"""Who is calling: API keys with scopes, stored hashed.

A key is `nba_<id>_<64 hex>` (32 random bytes after the id; `nba keys new` makes one). The
service stores only its entry:

    {"id": "web-shop", "hash": "sha256$<salt hex>$<hex of sha256(salt + key)>",
     "scopes": ["decide:web", "decide:agent", "respond"], "rate": 20, "burst": 40}

given inline by `NBA_API_KEYS` (a JSON list of entries) or in a secret file named by
`NBA_API_KEYS_FILE` (YAML or JSON, `keys: [...]`), or both. The hash is a salted SHA-256,
not a slow password hash: a key is 256 random bits, so nothing is gained by making each
guess slower, and a slow hash (scrypt at its usual cost is tens of milliseconds) would be
paid by every request. The id in the key finds its entry in one look-up; the digest is
compared in constant time.

Scopes:

    decide:<channel>   /decide and /decide_batch for that channel (`decide:*`: every channel);
                       channel `best`, or a list `channels`, needs every channel the engine may
                       choose among
    respond            POST /respond
    events             POST /events
    customers          GET /customers/{id} and GET .../preferences (the customer 360, the agent page)
    admin              DELETE /customers/{id} (erasure), PUT .../preferences, and every read of
                       `customers`

`NBA_ADMIN_TOKEN`, the one shared token of the erasure call before keys existed, still works
as `Authorization: Bearer <token>` and carries the `admin` scope only.

With no key configured the service is key-free, as the embedded quickstart is: every call
but erasure (which needs NBA_ADMIN_TOKEN) is open, to loopback callers only (a request from
another address is answered 401), and `nba serve` refuses a non-loopback address at start.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nba.errors import ConfigError
from nba.settings import Settings

PREFIX = "nba"
ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
PLAIN_SCOPES = ("respond", "events", "customers", "admin")
ADMIN_TOKEN_ID = "admin-token"
ANONYMOUS = "anonymous"  # the caller of a key-free service (loopback only)


@dataclass(frozen=True)
class Caller:
    """A known caller: its key id, the channels it may decide for (None: every one) and its
    other scopes; `rate`/`burst` override the service's token bucket for this key."""

    id: str
    channels: frozenset[str] | None
    scopes: frozenset[str]
    rate: float | None = None
    burst: int | None = None

    def may(self, scope: str) -> bool:
        return scope in self.scopes or (scope == "customers" and "admin" in self.scopes)

    def missing_channels(self, wanted: Iterable[str]) -> list[str]:
        if self.channels is None:
            return []
        return sorted(set(wanted) - self.channels)


@dataclass(frozen=True)
class _Entry:
    caller: Caller
    salt: bytes
    digest: bytes


def digest(key: str, salt: bytes) -> bytes:
    return hashlib.sha256(salt + key.encode()).digest()


def hash_key(key: str, salt: bytes | None = None) -> str:
    """The stored form of a key: `sha256$<salt hex>$<digest hex>`."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    return f"sha256${salt.hex()}${digest(key, salt).hex()}"


def new_key(key_id: str, scopes: Sequence[str], *, rate: float | None = None, burst: int | None = None
            ) -> tuple[str, dict[str, Any]]:
    """A fresh key (shown once, to give to the client) and the entry the service stores."""
    if not ID_RE.match(key_id):
        raise ConfigError(f"key id {key_id!r}: expected 1 to 64 letters, digits or '-'")
    key = f"{PREFIX}_{key_id}_{secrets.token_hex(32)}"
    entry: dict[str, Any] = {"id": key_id, "hash": hash_key(key), "scopes": list(scopes)}
    if rate is not None:
        entry["rate"] = rate
    if burst is not None:
        entry["burst"] = burst
    _parse_entry(entry, "the new key", None)  # the scopes are checked now, not at the service's start
    return key, entry


def _parse_entry(raw: Any, where: str, channels: Sequence[str] | None) -> _Entry:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected an entry with id, hash and scopes, got {raw!r}")
    unknown = set(raw) - {"id", "hash", "scopes", "rate", "burst"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; expected id, hash, scopes, rate, burst")
    kid = raw.get("id")
    if not isinstance(kid, str) or not ID_RE.match(kid):
        raise ConfigError(f"{where}: id = {kid!r}: expected 1 to 64 letters, digits or '-'")
    where = f"{where} (key '{kid}')"
    parts = str(raw.get("hash", "")).split("$")
    if len(parts) != 3 or parts[0] != "sha256":
        raise ConfigError(f"{where}: hash = {raw.get('hash')!r}: expected sha256$<salt hex>$<digest hex> "
                          "(`nba keys new` prints it)")
    try:
        salt, dig = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
    except ValueError:
        raise ConfigError(f"{where}: hash = {raw.get('hash')!r}: the salt and digest are not hex") from None
    if len(dig) != 32 or not salt:
        raise ConfigError(f"{where}: hash: expected a 32-byte SHA-256 digest and a salt")
    scopes = raw.get("scopes")
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise ConfigError(f"{where}: scopes = {scopes!r}: expected a list such as [\"decide:web\", \"respond\"]")
    chans: set[str] | None = set()
    plain: set[str] = set()
    for s in scopes:
        if s.startswith("decide:"):
            ch = s.removeprefix("decide:")
            if ch == "*":
                chans = None
            elif channels is not None and ch not in channels:
                raise ConfigError(f"{where}: scope '{s}': '{ch}' is not a channel of the catalog; expected "
                                  f"decide:* or decide:<one of {', '.join(channels)}>")
            elif chans is not None:
                chans.add(ch)
        elif s in PLAIN_SCOPES:
            plain.add(s)
        else:
            raise ConfigError(f"{where}: scope '{s}' is unknown; expected decide:<channel>, decide:*, "
                              f"{', '.join(PLAIN_SCOPES)}")
    rate, burst = raw.get("rate"), raw.get("burst")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0):
        raise ConfigError(f"{where}: rate = {rate!r}: expected requests per second > 0")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        raise ConfigError(f"{where}: burst = {burst!r}: expected a whole number >= 1")
    caller = Caller(kid, None if chans is None else frozenset(chans), frozenset(plain),
                    None if rate is None else float(rate), burst)
    return _Entry(caller, salt, dig)


class KeyRing:
    """The service's keys, by id; `authenticate` maps a presented key to its caller."""

    def __init__(self, entries: Sequence[_Entry], admin_token: str | None = None,
                 rate: float = 50.0, burst: int = 100):
        self._by_id: dict[str, _Entry] = {}
        for e in entries:
            if e.caller.id in self._by_id:
                raise ConfigError(f"API key id '{e.caller.id}' is given twice")
            self._by_id[e.caller.id] = e
        self.admin_token = admin_token or None
        self.rate, self.burst = rate, burst

    @property
    def keyed(self) -> bool:
        """Are API keys configured (else the service is key-free, loopback only)?"""
        return bool(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def authenticate(self, presented: str) -> Caller | None:
        if presented.startswith(PREFIX + "_"):
            parts = presented.split("_", 2)
            entry = self._by_id.get(parts[1]) if len(parts) == 3 else None
            if entry is not None and hmac.compare_digest(digest(presented, entry.salt), entry.digest):
                return entry.caller
            return None
        if self.admin_token and hmac.compare_digest(presented.encode(), self.admin_token.encode()):
            return Caller(ADMIN_TOKEN_ID, frozenset(), frozenset({"admin"}))
        return None

    def bucket(self, caller: Caller) -> tuple[float, int]:
        """The token bucket of a caller: (requests per second, burst)."""
        return (caller.rate or self.rate, caller.burst or self.burst)


def load_keyring(settings: Settings, channels: Sequence[str] | None = None) -> KeyRing:
    """The keys of NBA_API_KEYS and NBA_API_KEYS_FILE, checked (scopes against the catalog's
    `channels` when given); an error naming the source, the key and the problem."""
    entries: list[_Entry] = []
    if settings.api_keys:
        try:
            raw = json.loads(settings.api_keys)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"NBA_API_KEYS is not JSON ({exc}); expected a list of key entries") from None
        if not isinstance(raw, list):
            raise ConfigError("NBA_API_KEYS: expected a JSON list of key entries")
        entries += [_parse_entry(e, f"NBA_API_KEYS[{i}]", channels) for i, e in enumerate(raw)]
    if settings.api_keys_file is not None:
        entries += _read_file(settings.path(settings.api_keys_file), channels)
    return KeyRing(entries, settings.admin_token, settings.rate_limit, settings.rate_burst)


def _read_file(path: Path, channels: Sequence[str] | None) -> list[_Entry]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"NBA_API_KEYS_FILE {path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"NBA_API_KEYS_FILE {path}: not YAML or JSON ({exc})") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("keys"), list) or set(raw) - {"keys"}:
        raise ConfigError(f"NBA_API_KEYS_FILE {path}: expected one top-level `keys:` list of entries")
    return [_parse_entry(e, f"{path}: keys[{i}]", channels) for i, e in enumerate(raw["keys"])]


def is_loopback(host: str) -> bool:
    """Is `host` (an address or `localhost`) a loopback one?"""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings, host: str) -> None:
    """Refuse to serve on a non-loopback address without API keys (one line, at start)."""
    if is_loopback(host):
        return
    if not load_keyring(settings).keyed:
        raise ConfigError(f"refusing to serve on {host}: no API keys are set (NBA_API_KEYS or NBA_API_KEYS_FILE), "
                          "so anyone who reaches that address could decide and respond; add keys (`nba keys new`) "
                          "or bind 127.0.0.1")

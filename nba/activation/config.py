"""`serving/activation.yaml`: which connector delivers each outbound channel's messages.

Every outbound channel of `serving/policies.yaml` has a connector: the file's entry, else the
embedded default (`file`: one JSONL file per channel under `<work>/activation/`). An entry
that names an unknown channel, an inbound channel, an unknown connector kind or an unknown
field is refused at load, naming the file, the entry and the reason. `NBA_WEBHOOK_URL` (the
`webhook_url` setting) sends every channel to that one webhook (tests and local runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from nba.config import StrictModel, load_yaml_model
from nba.errors import ConfigError

ACTIVATION_FILE = Path("serving") / "activation.yaml"


class Retry(StrictModel):
    """Attempts and back-off: the n-th retry waits about backoff_s * 2^(n-1) (capped at
    max_backoff_s, times a random 0.5-1.5 so receivers that come back are not stampeded); after
    max_attempts the message is dead, with the last reason."""

    max_attempts: int = Field(6, ge=1, le=100)
    backoff_s: float = Field(2.0, gt=0, le=3600)
    max_backoff_s: float = Field(600.0, gt=0, le=86400)


class WebhookSpec(StrictModel):
    connector: Literal["webhook"]
    url: str = Field(description="http(s) URL the messages are POSTed to (JSON, an Idempotency-Key header)")
    timeout_s: float = Field(5.0, gt=0, le=120)
    concurrency: int = Field(16, ge=1, le=256, description="requests in flight at once")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")
    retry: Retry | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url '{v}' is not an http(s) URL with a host")
        return v


class RedisStreamSpec(StrictModel):
    connector: Literal["redis_stream"]
    url: str | None = Field(None, description="Redis URL [default: the redis_url setting]")
    stream: str | None = Field(None, min_length=1, description="stream key [default: <prefix>:activation:<channel>]")
    maxlen: int | None = Field(None, ge=1, description="approximate cap on the stream's length")
    retry: Retry | None = None


class FileSpec(StrictModel):
    connector: Literal["file"]
    path: Path | None = Field(None, description="JSONL file [default: <work>/activation/<channel>.jsonl]")
    retry: Retry | None = None


class NatsSpec(StrictModel):
    connector: Literal["nats"]
    url: str = "nats://127.0.0.1:4222"
    subject: str | None = Field(None, min_length=1, description="subject [default: nba.activation.<channel>]")
    stream: str = Field("NBA_ACTIVATION", pattern=r"^[A-Za-z0-9_-]+$",
                        description="the JetStream stream holding the subjects (created when missing)")
    timeout_s: float = Field(5.0, gt=0, le=120)
    retry: Retry | None = None


ConnectorSpec = Annotated[WebhookSpec | RedisStreamSpec | FileSpec | NatsSpec, Field(discriminator="connector")]
CONNECTOR_KINDS = ("webhook", "redis_stream", "file", "nats")


class ActivationFile(StrictModel):
    retry: Retry = Retry()
    channels: dict[str, ConnectorSpec] = Field(default_factory=dict)


class Activation(StrictModel):
    """The connector of every outbound channel, and each one's retry policy."""

    channels: dict[str, ConnectorSpec]
    retry: dict[str, Retry]
    source: str  # where it came from (the file, or the webhook override)


def load_activation(home: Path, directions: Mapping[str, str], *, path: Path | None = None,
                    webhook_url: str | None = None) -> Activation:
    """Read `serving/activation.yaml` (absent: every outbound channel writes to its file) and
    check each entry against the channels of `serving/policies.yaml` (`directions`: channel ->
    outbound | inbound). `webhook_url` sends every outbound channel to that webhook."""
    path = Path(path) if path else home / ACTIVATION_FILE
    spec = load_yaml_model(path, ActivationFile, "activation file") if path.is_file() else ActivationFile()
    for name in spec.channels:
        where = f"{path}: channels.{name}"
        if name not in directions:
            raise ConfigError(f"{where}: channel '{name}' is not a channel of serving/policies.yaml; expected one "
                              f"of the outbound channels {', '.join(c for c, d in directions.items() if d == 'outbound')}")
        if directions[name] != "outbound":
            raise ConfigError(f"{where}: channel '{name}' is {directions[name]} (the customer is there, nothing is "
                              "sent); only outbound channels have a connector")
    outbound = [c for c, d in directions.items() if d == "outbound"]
    if webhook_url:
        hook = WebhookSpec(connector="webhook", url=webhook_url)
        channels: dict[str, ConnectorSpec] = dict.fromkeys(outbound, hook)
        source = f"NBA_WEBHOOK_URL={webhook_url} (every channel)"
    else:
        channels = {c: spec.channels.get(c) or FileSpec(connector="file") for c in outbound}
        source = str(path) if path.is_file() else f"the embedded default (no {path}: files)"
    retry = {c: (s.retry or spec.retry) for c, s in channels.items()}
    return Activation(channels=channels, retry=retry, source=source)


def channel_directions(home: Path) -> dict[str, str]:
    """Channel -> outbound | inbound, from `serving/policies.yaml` (without compiling the catalog)."""
    from nba.catalog import POLICIES_FILE, PoliciesFile

    pol = load_yaml_model(home / POLICIES_FILE, PoliciesFile, "contact policies")
    return {name: c.direction for name, c in pol.channels.items()}

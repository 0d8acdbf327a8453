"""The action library: schema, loading, validation and rule compilation.

Two files a business user edits, both under `serving/`:

* `actions.yaml`: the catalog. For each action its id, issue (sales, retention, service,
  information, wellbeing, collections, risk), group, channels, value (a fixed amount or a
  formula, e.g. `0.05 * clv`), lever (a boost: 0.5 multiplies the priority by 1.5), the
  eligibility / applicability / suitability rules (lists of expressions over feature names,
  `nba.rules`), its contact policy, the registered model that gives its
  propensity (and optionally its uplift), and active-from / active-to dates.
* `policies.yaml`: what holds for every action: the channels (consent rules, caps, context
  weight), caps per group, the default contact policy, global suppressions (e.g. an open
  collections case), the arbitration (priority formula, "do nothing" threshold, k), the
  experiment layer (hold-out, exploration), the model scores rules may read (`churn_risk`,
  `clv`) and what to do when a customer has no online features.

`load_catalog` validates both and compiles every rule once. Everything that can be wrong is
reported before anything is served, naming the file, the action id, the rule and the reason:
unknown keys, a syntax error, a name that is not a feature, a rule over the language's bounds
(its size and depth, a power's exponent, arithmetic on strings), a duplicate id, an unknown
channel or group, a model that is not registered (when the registry is given).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from nba.config import StrictModel, load_yaml_model
from nba.errors import ConfigError
from nba.rules import Expression, ExpressionError, parse

ISSUES = ("sales", "retention", "service", "information", "wellbeing", "collections", "risk")
Issue = Literal["sales", "retention", "service", "information", "wellbeing", "collections", "risk"]
RULE_STAGES = ("eligibility", "applicability", "suitability")
# Every stage that can remove an action, in the order the core applies them (the trace names one).
STAGES = ("inactive", "channel", "trigger", *RULE_STAGES, "consent", "preference", "suppression", "cooldown", "cap")
# Names the priority formula may read besides features and scores.
PRIORITY_NAMES = frozenset({"propensity", "value", "lever", "uplift", "channel_weight"})
ACTIONS_FILE = Path("serving") / "actions.yaml"
POLICIES_FILE = Path("serving") / "policies.yaml"
MODEL_NAME = r"^nba-[a-z0-9][a-z0-9_\-]*$"


class Cap(StrictModel):
    """At most `count` contacts in any rolling window of `days`."""

    count: int = Field(ge=1)
    days: float = Field(gt=0)


class ContactPolicy(StrictModel):
    caps: list[Cap] = Field(default_factory=list)
    cooldown_days: float | None = Field(None, ge=0, description="no offer of the action for this long after a rejection")


def _rules(value: object) -> object:
    return [value] if isinstance(value, str) else value


class ActionSpec(StrictModel):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str = ""
    issue: Issue
    group: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    channels: list[str] = Field(min_length=1)
    value: float | str
    lever: float = Field(0.0, ge=-1.0, description="a boost: the priority is multiplied by 1 + lever")
    cost: float = Field(0.0, ge=0, description="cost of one contact with this action (incentive, fulfilment, an "
                                                "adviser's time), in euros, on top of the channel's cost")
    eligibility: list[str] = Field(default_factory=list)
    applicability: list[str] = Field(default_factory=list)
    suitability: list[str] = Field(default_factory=list)
    contact_policy: ContactPolicy | None = None
    model: str = Field(pattern=MODEL_NAME)
    uplift_model: str | None = Field(None, pattern=MODEL_NAME)
    holds: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]*$",
                              description="the holding flag (a 0/1 profile feature) an acceptance sets at once")
    active_from: date | None = None
    active_to: date | None = None
    cold_start: bool = Field(False, description="the action may go live before its model has a @champion: until "
                                                "then its P comes from a prior pooled over its issue and group, "
                                                "explored by Thompson sampling (nba.decisioning.coldstart)")

    _as_list = field_validator("eligibility", "applicability", "suitability", mode="before")(_rules)


class CatalogFile(StrictModel):
    version: str = Field(min_length=1)
    actions: list[ActionSpec] = Field(min_length=1)


class ChannelPolicy(StrictModel):
    requires: list[str] = Field(default_factory=list, description="consent rules (GDPR: no consent, no action)")
    caps: list[Cap] = Field(default_factory=list)
    weight: float = Field(1.0, ge=0, description="context weight the priority formula may read as channel_weight")
    direction: Literal["outbound", "inbound"] = Field(
        "outbound", description="outbound: the bank sends (an outbox message, counted against caps); "
                                "inbound: the customer is there (web, an agent's inbound call)")
    cost: float = Field(0.0, ge=0, description="cost of one contact on this channel, in euros")
    offers_as: str | None = Field(None, description="offer the actions of this other channel (an agent's inbound "
                                                    "call offers what the call centre offers)")

    _as_list = field_validator("requires", mode="before")(_rules)


class GroupPolicy(StrictModel):
    caps: list[Cap] = Field(default_factory=list)


class Suppression(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    when: str
    allow_issues: list[Issue] = Field(default_factory=list)


class Arbitration(StrictModel):
    priority: str = "propensity * value * (1 + lever)"
    threshold: float = Field(0.0, ge=0, description="'do nothing' when no priority exceeds it")
    default_k: int = Field(1, ge=1)
    max_k: int = Field(10, ge=1)


class Experiment(StrictModel):
    holdout_share: float = Field(0.05, ge=0, le=0.5)
    salt: str = Field(min_length=1)
    holdout_treatment: Literal["none", "random"] = "none"
    exploration_share: float = Field(0.05, ge=0, le=0.5)


class Economics(StrictModel):
    """What the business KPIs (`nba evaluate kpis`) need beyond the channels' and actions' costs."""

    acquisition_cost: float | None = Field(None, gt=0, description="euros to acquire one customer (CLV/CAC); "
                                                                   "omit when unknown")
    discount_rate: float = Field(0.10, ge=0, lt=1, description="yearly discount rate of the CLV over a horizon")


class MissingFeatures(StrictModel):
    mode: Literal["defaults", "reject"] = "defaults"
    defaults: dict[str, float | int | str] = Field(default_factory=dict)


class PoliciesFile(StrictModel):
    feature_service: str = Field("serving_v1", pattern=r"^[a-z0-9_]+_v[0-9]+$")
    channels: dict[str, ChannelPolicy] = Field(min_length=1)
    groups: dict[str, GroupPolicy] = Field(default_factory=dict)
    default_contact_policy: ContactPolicy = ContactPolicy()
    suppression: list[Suppression] = Field(default_factory=list)
    arbitration: Arbitration = Arbitration()
    experiment: Experiment
    scores: dict[str, str] = Field(default_factory=dict, description="score name -> registered model (churn_risk: nba-churn)")
    missing_features: MissingFeatures = MissingFeatures()
    economics: Economics = Economics()


# --- compiled form ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    stage: str
    expression: Expression

    @property
    def text(self) -> str:
        return self.expression.text


@dataclass(frozen=True)
class CompiledAction:
    index: int
    id: str
    name: str
    issue: str
    group: str
    channels: frozenset[str]
    value: float | Expression
    lever: float
    rules: tuple[Rule, ...]
    caps: tuple[Cap, ...]
    cooldown_s: float
    model: str
    uplift_model: str | None
    active_from_s: float  # epoch seconds; -inf when open
    active_to_s: float  # +inf when open
    cost: float = 0.0  # euros per contact, on top of the channel's
    holds: str | None = None  # the profile flag an acceptance sets (has_credit_card for a card offer)
    cold_start: bool = False  # may be served before its model has a champion (the pooled prior and Thompson)


@dataclass(frozen=True)
class CompiledChannel:
    name: str
    requires: tuple[Expression, ...]
    caps: tuple[Cap, ...]
    weight: float
    direction: str = "outbound"  # outbound | inbound
    cost: float = 0.0  # euros per contact


@dataclass(frozen=True)
class CompiledSuppression:
    name: str
    when: Expression
    allow_issues: frozenset[str]


@dataclass(frozen=True, eq=False)  # hashed by identity: the core caches per-catalog arrays
class Catalog:
    """The validated, compiled catalog and policies: what the decisioning core runs on."""

    version: str  # "<catalog version>+<digest of both files>"
    actions: tuple[CompiledAction, ...]
    channels: tuple[CompiledChannel, ...]
    group_caps: Mapping[str, tuple[Cap, ...]]
    suppressions: tuple[CompiledSuppression, ...]
    priority: Expression
    threshold: float
    default_k: int
    max_k: int
    experiment: Experiment
    scores: Mapping[str, str]
    missing_features: MissingFeatures
    feature_service: str
    feature_names: frozenset[str]
    economics: Economics = Economics()

    @property
    def action_ids(self) -> tuple[str, ...]:
        return tuple(a.id for a in self.actions)

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.group for a in self.actions))

    def channel(self, name: str) -> CompiledChannel:
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def models(self) -> dict[str, str]:
        """Every registered model the catalog reads: propensity, uplift and score models."""
        out = {f"propensity:{a.id}": a.model for a in self.actions}
        out.update({f"uplift:{a.id}": a.uplift_model for a in self.actions if a.uplift_model})
        out.update({f"score:{k}": v for k, v in self.scores.items()})
        return out

    @property
    def uses_uplift(self) -> bool:
        return "uplift" in self.priority.names

    @property
    def rule_names(self) -> frozenset[str]:
        """What rules and value formulas may read: features and scores."""
        return self.feature_names | frozenset(self.scores)


def _epoch(d: date | None, default: float) -> float:
    if d is None:
        return default
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def _hint(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _checked(text: str, kind: str, names: frozenset[str], where: str) -> Expression:
    expr = parse(text, kind=kind, where=where)
    unknown = sorted(expr.names - names)
    if unknown:
        hints = "".join(_hint(u, names) for u in unknown)
        raise ExpressionError(f"{where}: '{expr.text}' reads unknown name(s) {unknown}{hints}; rules read the "
                              f"features of the feature service and the scores ({', '.join(sorted(names))})")
    return expr


def compile_catalog(spec: CatalogFile, policies: PoliciesFile, feature_names: Collection[str], *,
                    models: Collection[str] | None = None, digest: str = "", where: str = "catalog") -> Catalog:
    """Check and compile a parsed catalog and policies against the feature names (and, when
    given, the registered models)."""
    features = frozenset(feature_names)
    clash = sorted(features & (frozenset(policies.scores) | PRIORITY_NAMES))
    if clash:
        raise ConfigError(f"{where}: score or formula name(s) {clash} are also feature names; rename the score")
    names = features | frozenset(policies.scores)
    channels = []
    for cname, cpol in policies.channels.items():
        reqs = tuple(_checked(r, "rule", names, f"{where}: channel '{cname}' requires") for r in cpol.requires)
        channels.append(CompiledChannel(cname, reqs, tuple(cpol.caps), cpol.weight, cpol.direction, cpol.cost))
    channel_names = [c.name for c in channels]
    offers_as = {c: p.offers_as for c, p in policies.channels.items() if p.offers_as}
    for cname, other in offers_as.items():
        if other not in channel_names or other in offers_as:
            raise ConfigError(f"{where}: channel '{cname}' offers_as '{other}', which is not a channel with its own "
                              f"offer; channels: {channel_names}")

    seen: dict[str, int] = {}
    compiled = []
    for i, a in enumerate(spec.actions):
        here = f"{where}: action '{a.id}'"
        if a.id in seen:
            raise ConfigError(f"{here} (position {i + 1}): duplicate id; it is already action {seen[a.id] + 1}")
        seen[a.id] = i
        bad = [c for c in a.channels if c not in channel_names]
        if bad:
            raise ConfigError(f"{here}: unknown channel(s) {bad}; policies define {channel_names}")
        if a.active_from and a.active_to and a.active_to <= a.active_from:
            raise ConfigError(f"{here}: active_to {a.active_to} is not after active_from {a.active_from}")
        rules = tuple(Rule(stage, _checked(text, "rule", names, f"{here} {stage} rule"))
                      for stage in RULE_STAGES for text in getattr(a, stage))
        if a.holds is not None and a.holds not in features:
            raise ConfigError(f"{here}: holds '{a.holds}' is not a feature of {policies.feature_service}"
                              f"{_hint(a.holds, features)}")
        value: float | Expression
        if isinstance(a.value, str):
            value = _checked(a.value, "number", names, f"{here} value formula")
        else:
            if a.value < 0:
                raise ConfigError(f"{here}: value {a.value} is negative; expected an amount >= 0")
            value = float(a.value)
        pol = a.contact_policy or policies.default_contact_policy
        cooldown = pol.cooldown_days if pol.cooldown_days is not None else (
            policies.default_contact_policy.cooldown_days or 0.0)
        caps = tuple(pol.caps) if a.contact_policy and a.contact_policy.caps else tuple(
            policies.default_contact_policy.caps)
        compiled.append(CompiledAction(
            index=i, id=a.id, name=a.name or a.id, issue=a.issue, group=a.group,
            channels=frozenset(a.channels) | {c for c, other in offers_as.items() if other in a.channels},
            value=value, lever=float(a.lever), rules=rules, caps=caps, cooldown_s=float(cooldown) * 86400.0,
            model=a.model, uplift_model=a.uplift_model, active_from_s=_epoch(a.active_from, float("-inf")),
            active_to_s=_epoch(a.active_to, float("inf")), cost=float(a.cost), holds=a.holds,
            cold_start=a.cold_start))

    groups = {a.group for a in compiled}
    unknown_groups = sorted(set(policies.groups) - groups)
    if unknown_groups:
        raise ConfigError(f"{where}: policies.groups names group(s) {unknown_groups} that no action belongs to "
                          f"(groups: {sorted(groups)})")
    suppressions = tuple(
        CompiledSuppression(s.name, _checked(s.when, "rule", names, f"{where}: suppression '{s.name}' when"),
                            frozenset(s.allow_issues)) for s in policies.suppression)
    priority = _checked(policies.arbitration.priority, "number", names | PRIORITY_NAMES,
                        f"{where}: arbitration.priority")
    if "uplift" in priority.names:
        missing = [a.id for a in compiled if not a.uplift_model]
        if missing:
            raise ConfigError(f"{where}: arbitration.priority '{priority.text}' reads uplift but action(s) "
                              f"{missing} have no uplift_model")
    if policies.arbitration.default_k > policies.arbitration.max_k:
        raise ConfigError(f"{where}: arbitration.default_k {policies.arbitration.default_k} exceeds max_k "
                          f"{policies.arbitration.max_k}")
    unknown_defaults = sorted(set(policies.missing_features.defaults) - features)
    if unknown_defaults:
        raise ConfigError(f"{where}: missing_features.defaults names unknown feature(s) {unknown_defaults}")
    catalog = Catalog(
        version=f"{spec.version}+{digest[:8]}" if digest else spec.version,
        actions=tuple(compiled), channels=tuple(channels),
        group_caps={g: tuple(p.caps) for g, p in policies.groups.items()}, suppressions=suppressions,
        priority=priority, threshold=policies.arbitration.threshold, default_k=policies.arbitration.default_k,
        max_k=policies.arbitration.max_k, experiment=policies.experiment, scores=dict(policies.scores),
        missing_features=policies.missing_features, feature_service=policies.feature_service,
        feature_names=features, economics=policies.economics)
    if models is not None:
        check_models(catalog, models, where)
    return catalog


def check_models(catalog: Catalog, models: Collection[str], where: str = "catalog") -> None:
    """Every model the catalog names must be registered (`nba bundle build` then needs a @champion
    of each model it serves)."""
    known = set(models)
    cold = {f"propensity:{a.id}" for a in catalog.actions if a.cold_start}
    for role, name in catalog.models.items():
        if name not in known and role not in cold:  # a cold-start action may come before its model
            kind, _, who = role.partition(":")
            subject = f"action '{who}' {kind} model" if kind != "score" else f"score '{who}'"
            raise ConfigError(f"{where}: {subject} '{name}' is not a registered model"
                              f"{_hint(name, known)}; registered: {', '.join(sorted(known)) or 'none'}")


def read_files(home: Path, actions: Path | None = None, policies: Path | None = None
               ) -> tuple[CatalogFile, PoliciesFile, str, str]:
    """Parse both YAML files (unknown keys and bad values name the file and the key).
    Returns the two models, a digest of both files' bytes and a description for errors."""
    a_path = Path(actions) if actions else home / ACTIONS_FILE
    p_path = Path(policies) if policies else home / POLICIES_FILE
    spec = load_yaml_model(a_path, CatalogFile, "action catalog")
    pol = load_yaml_model(p_path, PoliciesFile, "contact policies")
    digest = hashlib.sha256(a_path.read_bytes() + b"\0" + p_path.read_bytes()).hexdigest()
    return spec, pol, digest, str(a_path)


def load_catalog(home: Path, feature_names: Collection[str], *, actions: Path | None = None,
                 policies: Path | None = None, models: Collection[str] | None = None) -> Catalog:
    """Read, validate and compile `serving/actions.yaml` and `serving/policies.yaml`."""
    spec, pol, digest, where = read_files(home, actions, policies)
    return compile_catalog(spec, pol, feature_names, models=models, digest=digest, where=where)

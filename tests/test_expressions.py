"""The rule language: parsed once into a whitelisted tree, evaluated on arrays and on scalars."""

from __future__ import annotations

import numpy as np
import pytest

from nba.decisioning.expressions import ExpressionError, parse

ENV = {
    "age": np.array([17.0, 18.0, 45.0, 70.0, np.nan]),
    "credit_score": np.array([700.0, 480.0, 650.0, 501.0, 700.0]),
    "has_mortgage": np.array([0.0, 1.0, 0.0, 1.0, 0.0]),
    "rfm_segment": np.array(["best_active", "other", None, "loyal_low_basket", "other"], dtype=object),
    "clv": np.array([100.0, 0.0, 20.0, 5.0, 1.0]),
}


def _rows(env: dict, i: int) -> dict:
    return {k: (v[i] if not (isinstance(v[i], float) and np.isnan(v[i])) else np.nan) for k, v in env.items()}


@pytest.mark.parametrize(("text", "expected"), [
    ("age >= 18 and credit_score > 500", [False, False, True, True, False]),
    ("not has_mortgage", [True, False, True, False, True]),
    ("age < 18 or has_mortgage == 1", [True, True, False, True, False]),
    ("rfm_segment in ('best_active', 'loyal_low_basket')", [True, False, False, True, False]),
    ("rfm_segment not in ['other']", [True, False, True, True, False]),
    ("18 <= age < 65", [False, True, True, False, False]),
    ("max(age, 40) > 44 and abs(-credit_score) > 600", [False, False, True, False, False]),
])
def test_rules_evaluate_the_same_on_arrays_and_on_one_customer(text, expected):
    rule = parse(text, names=set(ENV))
    assert rule.evaluate(ENV).tolist() == expected
    assert [bool(rule.evaluate(_rows(ENV, i))) for i in range(5)] == expected


def test_a_missing_value_fails_every_comparison():
    """The fifth customer has no age: neither `age >= 18` nor `age < 18` holds."""
    assert parse("age >= 18").evaluate(ENV)[4] == np.False_
    assert parse("age < 18").evaluate(ENV)[4] == np.False_
    assert not parse("age >= 18").evaluate({"age": float("nan")})
    assert not parse("age < 18").evaluate({"age": float("nan")})


def test_formulas_compute_numbers():
    value = parse("30 + 0.1 * clv", kind="number", names={"clv"})
    assert np.allclose(value.evaluate(ENV), [40.0, 30.0, 32.0, 30.5, 30.1])
    assert value.evaluate({"clv": 200.0}) == pytest.approx(50.0)
    assert parse("propensity * value * (1 + lever)", kind="number").evaluate(
        {"propensity": 0.64, "value": 23.0, "lever": 1.0}) == pytest.approx(29.44)


@pytest.mark.parametrize(("text", "fragment"), [
    ("__import__('os').system('true')", "a call to anything but min, max, abs"),
    ("age.real > 3", "Attribute"),
    ("ENV['age'] > 3", "Subscript"),
    ("(lambda: 1)() == 1", "a call to anything but"),
    ("[x for x in age]", "ListComp"),
    ("age if age else 0", "IfExp"),
    ("age in (1, 'a')", "one kind"),
    ("age in ages", "literal tuple or list"),
    ("age // 2 > 1", "FloorDiv"),
])
def test_anything_outside_the_whitelist_is_refused(text, fragment):
    with pytest.raises(ExpressionError) as exc:
        parse(text, where="action 'x' eligibility rule")
    assert fragment in str(exc.value)
    assert "action 'x' eligibility rule" in str(exc.value)


def test_a_syntax_error_names_the_text_and_the_column():
    with pytest.raises(ExpressionError, match=r"'age >= and' is not a valid expression .*column"):
        parse("age >= and")


def test_unknown_names_are_listed():
    with pytest.raises(ExpressionError, match=r"unknown name\(s\) \['credit_scor'\]"):
        parse("credit_scor > 500", names={"credit_score"})


def test_a_condition_is_not_a_formula():
    with pytest.raises(ExpressionError, match="expected a number"):
        parse("clv > 3", kind="number")

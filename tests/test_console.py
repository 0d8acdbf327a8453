"""The console policy: named library warnings are silenced, others are not; library prints go
to the log without escape codes; our bars stay off when the output is not a terminal."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest

from nba import console


def _warn_from(module: str, category: type[Warning], message: str) -> list[str]:
    """Raise a warning as if from `module`, under quiet_libraries(); return what got through."""
    code = (
        "import warnings\n"
        "from nba import console\n"
        "console.quiet_libraries()\n"
        f"warnings.warn_explicit({message!r}, {category.__name__}, 'x.py', 1, module={module!r})\n"
    )
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                         timeout=60)
    return [line for line in out.stderr.splitlines() if category.__name__ in line]


def test_a_listed_library_warning_is_silenced_and_an_unlisted_one_is_shown() -> None:
    listed = "fetch_arrow_table() is deprecated, use to_arrow_table() instead."
    assert _warn_from("ibis.backends.duckdb", DeprecationWarning, listed) == []
    # the same text from our own code is not silenced: the list names the library
    assert len(_warn_from("nba.features.store", DeprecationWarning, listed)) == 1
    assert len(_warn_from("ibis.backends.duckdb", DeprecationWarning, "something new is deprecated")) == 1


def test_every_listed_warning_has_a_reason_and_a_pytest_spec() -> None:
    for w in console.LIBRARY_WARNINGS:
        assert len(w.reason) > 20, w
        action, message, category, module = w.filter_spec().split(":")
        assert action == "ignore" and module == w.module
        assert category.rsplit(".", 1)[-1] == w.category.__name__


def test_library_prints_go_to_the_log_without_escape_codes(caplog: pytest.LogCaptureFixture,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("nba.test_console")
    with caplog.at_level(logging.DEBUG, logger=log.name), console.library_prints(log):
        print("Materializing \x1b[1m\x1b[32m5\x1b[0m feature views")
    assert capsys.readouterr().out == ""
    assert caplog.messages == ["Materializing 5 feature views"]


def test_our_bars_are_off_when_the_output_is_not_a_terminal() -> None:
    # pytest captures stderr: not a terminal
    bar = console.progress(10, "work", "item")
    assert bar.disable is True
    bar.close()


def test_our_own_deprecations_fail_the_tests() -> None:
    # pyproject's filterwarnings: error::DeprecationWarning:nba
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old", DeprecationWarning, "nba/x.py", 1, module="nba.somewhere")


def test_a_listed_warning_is_dropped_even_behind_a_library_filter_of_its_own() -> None:
    # Feast runs simplefilter("once", DeprecationWarning) at import: in front of our filters
    code = (
        "import warnings\n"
        "from nba import console\n"
        "console.quiet_libraries()\n"
        "warnings.simplefilter('once', DeprecationWarning)\n"
        "warnings.warn_explicit('fetch_arrow_table() is deprecated, use to_arrow_table() instead.',"
        " DeprecationWarning, '/venv/site-packages/ibis/backends/duckdb/__init__.py', 332,"
        " module='ibis.backends.duckdb')\n"
        "warnings.warn_explicit('another one is deprecated', DeprecationWarning,"
        " '/venv/site-packages/ibis/backends/duckdb/__init__.py', 333, module='ibis.backends.duckdb')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    shown = [line for line in out.stderr.splitlines() if "DeprecationWarning" in line]
    assert len(shown) == 1 and "another one is deprecated" in shown[0]


def test_a_request_bentoml_refused_is_one_info_line_and_a_server_fault_keeps_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """BentoML's own `log_exception` (what its app calls for a refused input) through our filter."""
    from bentoml._internal.server.http_app import log_exception
    from pydantic import BaseModel, ValidationError
    from starlette.requests import Request

    from nba.console import one_line_client_errors

    class Input(BaseModel):
        decision_id: str
        outcome: str

    one_line_client_errors()
    one_line_client_errors()  # installed once
    request = Request({"type": "http", "method": "POST", "path": "/respond", "headers": [], "query_string": b""})
    with caplog.at_level(logging.INFO, logger="bentoml._internal.server.http_app"):
        try:
            Input.model_validate({"decision_id": 5})
        except ValidationError:
            log_exception(request)
        try:
            raise RuntimeError("a real fault")
        except RuntimeError:
            log_exception(request)
    refused, fault = caplog.records
    assert refused.levelname == "INFO" and refused.exc_info is None
    assert refused.getMessage() == ("Exception on /respond [POST]: answered 400, 2 validation error(s) of the request "
                                    "(first: decision_id: Input should be a valid string)")
    assert "Traceback" not in caplog.handler.format(refused)
    assert fault.levelname == "ERROR" and fault.exc_info is not None  # a server's own fault is shown whole

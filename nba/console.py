"""What a person sees on the console: the one list of library warnings we silence, and why.

Library code logs (`logging.getLogger(__name__)`) and never decides what a person sees; the
CLI, the service and the test suite call `quiet_libraries()` once, which applies the list
below. A warning that is not listed here is shown: a new one is noticed, never hidden by a
blanket rule. Our own deprecations are errors in the tests (`pyproject.toml`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Silenced:
    """One library warning the console does without, with the reason."""

    category: type[Warning]
    message: str  # a regular expression matched against the start of the message
    module: str  # a regular expression matched against the module the warning is attributed to
    reason: str

    def matches(self, message: str, category: type[Warning], filename: str) -> bool:
        """Whether a warning about to be shown is this one (by its text, class and the file of
        the library it is attributed to)."""
        return (issubclass(category, self.category) and re.match(self.message, message, re.I) is not None
                and re.search("/" + self.module.replace(r"\.", "/"), filename) is not None)

    def filter_spec(self) -> str:
        """The same filter in pytest's `filterwarnings` syntax (fields split on ':', so a colon
        in the message matches as any character)."""
        category = f"{self.category.__module__}.{self.category.__qualname__}"
        return f"ignore:{self.message.replace(':', '.')}:{category}:{self.module}"


LIBRARY_WARNINGS: tuple[Silenced, ...] = (
    Silenced(DeprecationWarning, r"fetch_arrow_table\(\) is deprecated", r"ibis\.",
             "ibis (under Feast's duckdb offline store) calls a duckdb method duckdb renamed; "
             "nothing for us to change, fixed upstream in ibis"),
    Silenced(RuntimeWarning, r"On demand feature view is an experimental feature", r"feast\.",
             "Feast flags every on-demand view as experimental at apply; ours is Python-mode and "
             "tested against Feast's own reads"),
    Silenced(UserWarning, r"Hint: Inferred schema contains integer column", r"mlflow\.",
             "MLflow's signature hint for integer columns; our models are scored from float32 "
             "arrays, never through the signature's integer type"),
    Silenced(Warning, r".*noload.* loader strategy is deprecated", r"mlflow\.",
             "MLflow's own SQLAlchemy store uses an option SQLAlchemy 2 deprecates (SADeprecationWarning)"),
    Silenced(FutureWarning, r".*[Dd]owncasting", r"(evidently|pandas)\.",
             "pandas' downcasting notice raised from inside Evidently's drift metrics, once per column"),
    Silenced(DeprecationWarning, r"GitWildMatchPattern \('gitwildmatch'\) is deprecated", r"pathspec\.",
             "BentoML's bento build matches its include patterns with a pathspec style pathspec renamed"),
    Silenced(DeprecationWarning, r"The `__get_pydantic_core_schema__` method of the `BaseModel` class is deprecated",
             r"_bentoml_sdk\.", "BentoML's IO models override a hook Pydantic 2.11 deprecates "
             "(PydanticDeprecatedSince211), when a service's API is built"),
    Silenced(DeprecationWarning, r"numpy\.core is deprecated", r"evidently\.",
             "Evidently 0.7 imports its own legacy test helpers, which patch numpy.core, on import"),
    Silenced(DeprecationWarning, r"(Call to deprecated function 'Dependency'|Use of deprecated class 'DependencyKwarg')",
             r"litestar\.", "Litestar (Evidently's workspace service runs on it) declares its own deprecated "
             "dependency helpers at import (LitestarDeprecationWarning)"),
    Silenced(DeprecationWarning, r"path is deprecated\. Use files\(\) instead", r"_bentoml_sdk\.",
             "BentoML's image builder uses importlib.resources.path, deprecated in Python 3.11"),
    Silenced(RuntimeWarning, r"The spark (data source API|offline store) is an experimental feature", r"feast\.",
             "Feast flags its Spark source and offline store as alpha at every use; the spark profile's frames "
             "are tested equal to the embedded store's (tests/test_spark.py)"),
    Silenced(Warning, r"IProgress not found", r"tqdm\.",
             "in a notebook, tqdm.auto (imported by the stack) asks for ipywidgets, which the platform does not "
             "need: its bars are off outside a terminal anyway (TQDM_DISABLE)"),
)

# Loggers of the stack that talk at INFO about their own bookkeeping (MLflow creating its
# tables, BentoML's model store, Feast's registry): a person sees them only at WARNING.
LIBRARY_LOGGERS: dict[str, int] = {
    # MLflow warns at every log_model that pickled scikit-learn models execute code on load:
    # true of every pickle, and the registry is ours; its errors still show.
    "mlflow": logging.ERROR,
    "alembic": logging.WARNING,
    "feast": logging.WARNING,
    "bentoml": logging.WARNING,
    "evidently": logging.WARNING,
    "optuna": logging.WARNING,
    # py4j (PySpark's bridge to the JVM) logs each connection it opens and closes at INFO
    "py4j": logging.ERROR,
    "pyspark": logging.WARNING,
}

# MLflow prints some notices with its own `eprint` ("Successfully registered model ...",
# "Created version ..."): our registry prints its own line for each model, so MLflow's
# stream is muted while the CLI runs (`quiet_mlflow`). Its warnings about pickled models
# are about scikit-learn's format and concern the user of a model file, not of the CLI.
QUIET_ENV: dict[str, str] = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a bar per hold-out frame downloaded by `promote`
    "MLFLOW_LOGGING_LEVEL": "ERROR",  # MLflow's INFO/WARNING notices (set before it is imported)
}

_quiet = False


class ClientErrorsInOneLine(logging.Filter):
    """BentoML logs each call its input validation refused as an ERROR with pydantic's
    twenty-line traceback ("Exception on /respond [POST]"), although the caller was answered
    400 naming the field (`nba.serving.gate`): a fuzz run of 10,000 calls printed about 700 of
    them. The record becomes one INFO line with the count and the first field."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or type(exc).__name__ != "ValidationError" or not type(exc).__module__.startswith("pydantic"):
            return True
        errors = exc.errors(include_context=False, include_input=False)  # type: ignore[attr-defined]
        first = ".".join(str(x) for x in errors[0]["loc"]) if errors and errors[0].get("loc") else "body"
        record.msg = (f"{record.getMessage()}: answered 400, {len(errors)} validation error(s) of the request "
                      f"(first: {first}: {errors[0]['msg'] if errors else ''})")
        record.args = None
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# the logger of BentoML's `log_exception` (bentoml._internal.server.http_app)
BENTOML_REQUEST_ERRORS = "bentoml._internal.server.http_app"


def one_line_client_errors() -> None:
    """Install `ClientErrorsInOneLine` on BentoML's request-error logger (once)."""
    log = logging.getLogger(BENTOML_REQUEST_ERRORS)
    if not any(isinstance(f, ClientErrorsInOneLine) for f in log.filters):
        log.addFilter(ClientErrorsInOneLine())


def quiet_libraries() -> None:
    """Apply the list above to this process (and, through the environment, its children)."""
    global _quiet
    _quiet = True
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if not is_terminal():
        # the bars the stack draws itself (Feast's per-view materialisation bars): in a log they
        # are carriage returns and escape codes; tqdm reads TQDM_* variables as its defaults
        os.environ.setdefault("TQDM_DISABLE", "1")
    for w in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=w.message, category=w.category, module=w.module)
    # Some libraries put filters of their own in front of ours (Feast, at import:
    # simplefilter("once", DeprecationWarning); MLflow around log_model: "once" for UserWarning),
    # so the listed warnings are also dropped where they would be shown.
    if not getattr(warnings.showwarning, "_nba_quiet", False):
        warnings.showwarning = _drop_listed(warnings.showwarning)
    for name, level in LIBRARY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    if "mlflow" in sys.modules:
        quiet_mlflow()


def _drop_listed(show):
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not any(w.matches(str(message), category, filename) for w in LIBRARY_WARNINGS):
            show(message, category, filename, lineno, file, line)

    showwarning._nba_quiet = True  # type: ignore[attr-defined]
    return showwarning


def quiet_mlflow() -> None:
    """Mute MLflow's own notice stream when the console is quiet (call after importing mlflow)."""
    if not _quiet:
        return
    from mlflow.utils import logging_utils

    logging_utils.disable_logging()


@contextlib.contextmanager
def library_prints(logger: logging.Logger) -> Iterator[None]:
    """Send what a library `print`s (Feast's coloured materialisation banner) to `logger` at
    DEBUG instead of the console: the caller reports the same facts in its own words."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    text = _ANSI.sub("", buffer.getvalue()).strip()
    if text:
        logger.debug("%s", text)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(total: int | None, desc: str, unit: str, *, leave: bool = True, enabled: bool = True):
    """A tqdm bar on a terminal; nothing when the output is a file or a pipe (no carriage
    returns or ANSI codes in a log), where the command's own lines say what happened."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=not (enabled and is_terminal()))

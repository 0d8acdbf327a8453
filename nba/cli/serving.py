"""`nba bundle build | show`, `nba serve`, `nba decide-batch`: the serving bundle, the decision
service and outbound batch decisions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from nba.cli.common import echo, parse_time, settings

bundle_app = typer.Typer(help="The serving bundle: champion models, catalog and policies as a Bento.",
                         no_args_is_help=True)


@bundle_app.command("build")
def bundle_build() -> None:
    """Resolve every @champion the catalog reads, import them into BentoML, build the Bento.

    Compiles serving/actions.yaml and serving/policies.yaml against the feature service and
    the MLflow registry first: a bad rule, an unknown feature or model fails here, naming the
    action, the rule and the reason. Each model's trees are converted to ONNX and checked
    against XGBoost; the per-action propensity models are also merged into one graph, each
    output checked equal to its model's own, so a decision scores a customer's actions in one
    call.
    """
    from nba.serving.bundle import build, read_manifest

    s = settings()
    result = build(s, progress=lambda tag: echo(f"  imported {tag}"))
    echo(f"bundle {result.bundle_dir} (catalog {result.catalog_version})")
    for m in result.models:
        echo(f"  {m.name:<40} v{m.version:<4} {', '.join(m.roles)}")
    joint = read_manifest(result.bundle_dir).get("joint")
    if joint:
        echo(f"  the {len(joint['models'])} per-action propensity models in one ONNX graph ({joint['file']}): one "
             "call scores a customer's actions; each output checked equal to the model's own")
    echo(f"Bento {result.bento_tag} in {s.bentoml_home}; serve it with `nba serve`")


@bundle_app.command("show")
def bundle_show() -> None:
    """Print the bundle's manifest: catalog version, models and versions, Bento tag."""
    from nba.serving.bundle import read_manifest

    manifest = read_manifest(settings().bundle_dir)
    echo(json.dumps({k: v for k, v in manifest.items() if k != "features"}, indent=2))


def serve_cmd(
    port: Annotated[int, typer.Option(help="Port on localhost.", min=1, max=65535)] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")] = "127.0.0.1",
    workers: Annotated[int | None, typer.Option(help="Worker processes [default: NBA_SERVE_WORKERS, else the cores].",
                                                 min=1)] = None,
    activation: Annotated[bool, typer.Option(help="Run the outbox's delivery worker beside the service "
                                                  "(nba activation run).")] = True,
) -> None:
    """Serve the built Bento (`nba bundle build`) with BentoML: /decide, /decide_batch,
    /respond, /healthz, /readyz; the OpenAPI page at /docs.json and the UI at /. The delivery
    worker sends the outbox's messages meanwhile (--no-activation: not). It is ready once every
    worker is. A worker decides the /decide calls that reach it while it decides together
    (NBA_SERVE_BATCH), commits a batch to the log while it decides the next
    (NBA_SERVE_COMMIT_THREADS), and closes a keep-alive connection after
    NBA_SERVE_KEEPALIVE_REQUESTS answers, so the workers share the connections."""
    from nba.serving.run import serve

    serve(settings(), host=host, port=port, workers=workers, echo=echo, activation=activation)


# numpy: vectorised chunks in this process; spark: the same core per Spark partition (mapInPandas)
BatchEngine = Literal["numpy", "spark"]  # nba.serving.batch.ENGINES


def decide_batch_cmd(
    customers: Annotated[Path, typer.Option(help="Parquet (or CSV) with customer_id; feature columns of the "
                                                 "feature service are used when present, else read online.")],
    channel: Annotated[str, typer.Option(help="Channel of every decision (e.g. email).")],
    out: Annotated[Path, typer.Option(help="Ranked decisions, one row per customer and rank (Parquet).")],
    k: Annotated[int | None, typer.Option(help="Actions to rank per customer [default: the policies' k].",
                                          min=1)] = None,
    timestamp: Annotated[str | None, typer.Option(help="Moment of the decisions [default: now].")] = None,
    chunk: Annotated[int, typer.Option(help="Customers per vectorised pass (numpy engine).", min=1)] = 100_000,
    engine: Annotated[BatchEngine, typer.Option(help="numpy: vectorised in this process; spark: the same core per "
                                                     "partition on NBA_SPARK_MASTER (local[2] by default); --out is "
                                                     "then a folder of Parquet parts.")] = "numpy",
) -> None:
    """Outbound decisions for a file of customers: the same core, models and log records as
    /decide, vectorised; the shown actions count as contacts for the contact policies."""
    at = parse_time(timestamp, "--timestamp")
    ts = at.timestamp() if at else None
    if engine == "spark":
        from nba.serving.spark_batch import decide_batch_spark

        summary = decide_batch_spark(settings(), customers, channel, out, k=k, timestamp=ts)
    else:
        from nba.serving.batch import decide_batch

        summary = decide_batch(settings(), customers, channel, out, k=k, timestamp=ts, chunk=chunk, progress=True)
    echo(summary.describe())

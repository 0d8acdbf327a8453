"""The floor under `/decide`: a BentoML service with the decision service's configuration and
`/decide` signature whose endpoint does nothing but answer a fixed decision. `bench_decide.py`
serves it beside the real one, so the cost of BentoML's own request path is measured in the
same run (`bentoml serve benchmarks.floor_service:FloorService`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import bentoml
from pydantic import Field
from starlette.responses import Response

from nba.serving.service import CONFIG

ANSWER = (b'{"decision_id":"0","customer_id":0,"channel":"web","experiment_group":"nba","actions":[],'
          b'"filtered":[],"timing":{}}')


@bentoml.service(name="nba_floor", **CONFIG)
class FloorService:
    @bentoml.api(route="/decide")
    async def decide(self, customer_id: Annotated[int, Field(strict=True, ge=0)], channel: str,
                     context: dict[str, float | int | str] = {},  # noqa: B006
                     timestamp: datetime | None = None,
                     k: Annotated[int | None, Field(strict=True)] = None) -> dict:
        return Response(ANSWER, media_type="application/json")  # type: ignore[return-value]

"""Concurrent `/decide` calls of one worker, decided together.

A worker used to decide on its event loop, one call at a time: under load each call paid the
whole fixed cost of a decision (the feature read, a model call per action group, the rules, a
log transaction) and, while it did, the loop could read no other request. Decided together,
the core's vectorised pass shares that cost: in process, 8 customers in one call cost about
0.56 ms each against 1.9 ms for one alone (`benchmarks/RESULTS.md`).

So a call joins the worker's queue, and one decider thread takes everything queued, decides it
in one engine call and hands each caller its answer; meanwhile the event loop goes on reading
and parsing the next calls, which form the next batch. There is no time window: a call that
arrives when the decider is idle is decided at once (the hop to the thread costs about 0.1 ms).
Scheduling the batch on the loop itself (`call_soon`) formed batches of 2-3 where the thread
forms 4-8, because the loop was then blocked while it decided.

A call's answer is its own: a request the engine refuses (`RequestError`, raised before
anything is written or counted) makes the batch be decided again call by call, so only that
call gets the 400; a component that is down answers every call of the batch 503, as it would
have answered each alone. A customer twice in one batch is decided twice, one after the other
(`DecisionEngine.decide`), so no cap is exceeded.

The log's commit is not the decider's to wait for. With `commits`, the decider thread only
decides (`DecisionEngine.begin_decide`: the decisions made, their contacts reserved) and hands
the batch's log append to a commit thread; it then decides the next batch while that commit is
in flight. A caller's answer is still settled only once its decisions are committed. Waiting
for the commit (a WAL flush: 1-3 ms on Postgres) used to leave the decider idle for a third of
a batch's time under load.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MAX_BATCH = 64  # calls decided together at most; the rest wait for the next turn


class DecideBatcher:
    """Decides the calls of one event loop together, in one thread of its own (module docstring;
    two decider threads were slower, 662/s against 848/s: their log commits queued behind each
    other)."""

    def __init__(self, begin: Callable[[Sequence[Any]], Callable[[], list[Any]]], *, max_batch: int = MAX_BATCH,
                 commits: int = 0):
        """`begin(requests)` decides them and returns a function that commits them and returns
        the answers (`DecisionEngine.begin_decide`). `commits` threads run those functions while
        the decider goes on; with 0, the decider runs each itself before the next batch."""
        if commits < 0:
            raise ValueError(f"commits: {commits} (expected 0 or more)")
        self._begin = begin
        self.max_batch = max_batch
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._lock = threading.Lock()
        self._deciding = False  # the decider thread is at work (it takes what is queued before it stops)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nba-decide")
        self._commits = (ThreadPoolExecutor(max_workers=commits, thread_name_prefix="nba-commit")
                         if commits else None)
        self.batches = 0  # engine calls made (a refused batch's calls are then made again one by one)
        self.calls = 0  # requests in those engine calls

    @property
    def waiting(self) -> int:
        """Calls queued for the next batch."""
        with self._lock:
            return len(self._queue)

    async def decide(self, request: Any) -> dict[str, Any]:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        with self._lock:
            self._queue.append((request, fut))
            start, self._deciding = not self._deciding, True
        if start:
            self._pool.submit(self._drain)
        return await fut  # type: ignore[no-any-return]

    def _drain(self) -> None:
        """In the decider thread: decide what is queued, batch after batch, until nothing is;
        each batch's commit, if deferred, goes to a commit thread."""
        while True:
            with self._lock:
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                if not batch:
                    self._deciding = False
                    return
            answers: list[Answer] = []
            pending: list[tuple[list[asyncio.Future], Callable[[], list[Any]]]] = []
            self._run(batch, answers, pending)
            _hand(answers)
            for futs, commit in pending:
                if self._commits is not None:
                    self._commits.submit(_commit, futs, commit)
                else:
                    _commit(futs, commit)

    def _run(self, batch: list[tuple[Any, asyncio.Future]], answers: list[Answer],
             pending: list[tuple[list[asyncio.Future], Callable[[], list[Any]]]]) -> None:
        from nba.serving.engine import RequestError

        self.batches += 1
        self.calls += len(batch)
        try:
            commit = self._begin([r for r, _ in batch])
        except RequestError as exc:
            if len(batch) > 1:  # nothing was written: each call again, alone, for its own answer
                for item in batch:
                    self._run([item], answers, pending)
                return
            answers.append((batch[0][1], None, exc))
        except Exception as exc:  # a store down: every call's answer (each alone would have had it)
            answers.extend((fut, None, exc) for _, fut in batch)
        else:
            pending.append(([fut for _, fut in batch], commit))


Answer = tuple[asyncio.Future, Any, BaseException | None]


def _commit(futs: list[asyncio.Future], commit: Callable[[], list[Any]]) -> None:
    """In a commit thread (or the decider's): commit one batch, then hand its callers their
    answers (a failed commit is every call's answer, as the decider hands a store that is down)."""
    try:
        out = commit()
    except BaseException as exc:  # noqa: BLE001  # the callers get it
        _hand([(fut, None, exc) for fut in futs])
    else:
        _hand([(fut, result, None) for fut, result in zip(futs, out, strict=True)])


def _hand(answers: list[Answer]) -> None:
    """Each answer settled on its caller's own event loop: a drain that started for one loop
    may take calls queued from another (a batcher used by two `asyncio.run`s in turn), and
    settling those on the first, closed loop lost them (the caller waited forever)."""
    loops: dict[asyncio.AbstractEventLoop, list[Answer]] = {}
    for answer in answers:
        loops.setdefault(answer[0].get_loop(), []).append(answer)
    for loop, theirs in loops.items():
        loop.call_soon_threadsafe(_settle, theirs)


def _settle(answers: list[Answer]) -> None:
    """On the event loop: each caller's answer (one that went away is skipped)."""
    for fut, result, exc in answers:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

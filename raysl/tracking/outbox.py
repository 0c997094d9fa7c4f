"""MLflow writes of a study that outlive a tracking server's outage (a restart, a network blip).

The study's driver logs every trial event through `Outbox.call`. MLflow's client already
retries a request for about 4 minutes (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, default 7, with
exponential backoff), so a server restarted within that time costs only a pause. When a write
still fails and the server does not answer `/health`, the write is queued instead of failing the
study, the terminal gets one line, and every later write queues behind it (MLflow sees them in
order). The queue is delivered as soon as the server answers again: the metrics logged while it
was down arrive afterwards, at their own steps. A write whose request failed may still have been
applied (the server went away after applying it, before its answer arrived): a write that must
not be applied twice (metrics, which MLflow appends) names an `again`, which sends it once more
only where it is missing. At the end the study waits up to 5 minutes
for the server; whatever is still queued then is reported in one line (`gap`).
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

WAIT_S = 300.0  # how long the end of a study waits for an absent server (~ MLflow's retries)


class Outbox:
    """Ordered delivery of tracker calls to an MLflow server that may be briefly away.

    Args:
        tracking_uri: the server (http/https); other stores (SQLite, files) are called directly.
        echo: prints one line for people (the study's console).
    """

    def __init__(self, tracking_uri: str, echo: Callable[[str], None] = print) -> None:
        self.uri = tracking_uri.rstrip("/")
        self.server = self.uri.startswith(("http://", "https://"))
        self.echo = echo
        self.pending: deque[tuple[str, Callable[..., Any], tuple[Any, ...]]] = deque()
        self.down_since: float | None = None
        self.delivered_late = 0

    def call(
        self,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        again: Callable[..., Any] | None = None,
    ) -> None:
        """`fn(*args)` now, or queued behind earlier writes while the server is away.

        `again(*args)` replaces `fn(*args)` for every later attempt (a queued write has had
        one that failed, or waits behind one): it must do what `fn` does except what a failed
        attempt may already have done. Left out, `fn` is repeated as it is (tags, a status).
        """
        resend = again or fn
        if self.pending and not self.flush():
            self.pending.append((what, resend, args))
            return
        try:
            fn(*args)
        except Exception as error:
            if not self.server:
                raise
            if self._healthy():  # back already, or a real error (bad value): once more
                resend(*args)
                return
            self._went_down(error)
            self.pending.append((what, resend, args))

    def flush(self) -> bool:
        """Deliver the queue if the server answers; True when nothing is left."""
        if not self.pending:
            return True
        if not self._healthy():
            return False
        while self.pending:
            what, fn, args = self.pending[0]
            try:
                fn(*args)
            except Exception as error:
                if self._healthy():
                    logger.warning("dropped MLflow write %s: %s", what, error)
                    self.pending.popleft()  # it fails on a healthy server: never deliverable
                    continue
                return False
            self.pending.popleft()
            self.delivered_late += 1
        away = time.time() - (self.down_since or time.time())
        self.echo(
            f"MLflow server {self.uri} answers again after {away:.0f} s; "
            f"{self.delivered_late} delayed writes delivered"
        )
        self.down_since = None
        return True

    def gap(self, wait_s: float = WAIT_S) -> str | None:
        """At the study's end: deliver the queue, waiting up to `wait_s` for the server to be
        back (the study's last writes need it too); one line for what never arrived, or None."""
        if self.pending:
            self.echo(f"waiting up to {wait_s / 60:.0f} min for MLflow server {self.uri}…")
        deadline = time.time() + wait_s
        while not self.flush() and time.time() < deadline:
            time.sleep(2)
        if not self.pending:
            return None
        since = time.strftime("%H:%M:%S", time.localtime(self.down_since or time.time()))
        trials = sorted({str(args[0]) for _, _, args in self.pending if args})
        return (
            f"MLflow server {self.uri} unreachable since {since}: {len(self.pending)} writes "
            f"({', '.join(trials[:5])}{' ...' if len(trials) > 5 else ''}) were not recorded; "
            "the leaderboard in the study directory has every trial"
        )

    def _went_down(self, error: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.time()
            logger.warning("MLflow server %s unreachable: %s", self.uri, error)
            self.echo(
                f"MLflow server {self.uri} does not answer; the study goes on and its "
                "writes are delivered when it is back"
            )

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=3) as response:
                return response.status == 200
        except OSError:
            return False

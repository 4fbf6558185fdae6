"""How nixfarm tries again: each retry loop is one of these tenacity policies, by name.

- :func:`runner_calls` — a runner's calls to its server (register, claim, heartbeat,
  log chunks). A runner has nothing better to do than wait for its server, so it
  tries until the call goes through (or, for a log chunk, until ``give_up_after``).
- :func:`deliveries` — a job's webhooks and emails, as the operator configured them
  (``jobs.trigger_attempts``, ``jobs.trigger_retry_seconds``).
- :func:`uploads` — a client's idempotent transfer (``nixfarm push``'s PUT of a
  path, its question about what is missing) that got no answer or stalled: tried
  UPLOAD_ATTEMPTS times in all, pausing 1, 2, 4... seconds, then the last error.
- :func:`provider_calls` — a builder provider's API call answered 429 or 5xx, or not
  at all (``ProviderError`` with ``retryable``): tried ``attempts`` times in all,
  pausing ``first_pause`` doubling with jitter (or what ``Retry-After`` asked, if more).
- :func:`reconnects` — a client following a stream (a job's events) whose connection
  broke: it connects again, for as long as the server has been silent less than
  RECONNECT_GIVE_UP seconds.

Run a call under a policy with :func:`retried`, which keeps the call's type.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar, cast

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_exponential_jitter,
)

from nixfarm.errors import Conflict, NixfarmError, ProviderError, Unavailable

P = ParamSpec("P")
T = TypeVar("T")

#: A runner's first pause after a failed call, and the longest (well within a lease).
RUNNER_FIRST_PAUSE = 0.5
RUNNER_LONGEST_PAUSE = 5.0


def _worth_another_call(error: BaseException) -> bool:
    # A Conflict (a lease lost, a name taken) is the server's settled answer; any other
    # failure may pass: no answer (Unavailable), a server restarting (5xx), a runner
    # the server forgot and will know again once it re-registers.
    return isinstance(error, NixfarmError) and not isinstance(error, Conflict)


def _log_failure(what: str, log: logging.Logger) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        pause = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s failed (attempt %d): %s; again in %.1f s", what, state.attempt_number,
                    getattr(error, "message", error), pause)

    return before_sleep


def runner_calls(what: str, log: logging.Logger,
                 give_up_after: float | None = None) -> AsyncRetrying:
    """A runner's call to its server, tried until it goes through.

    Every failure but a ``Conflict`` is tried again, after pauses that start at
    RUNNER_FIRST_PAUSE and double up to RUNNER_LONGEST_PAUSE, each with up to half a
    second of jitter so that runners whose server came back do not all call at once.
    With ``give_up_after`` (seconds since the first try) the last error is raised then.
    Each failure is logged as a warning naming ``what``.
    """
    return AsyncRetrying(
        retry=retry_if_exception(_worth_another_call),
        wait=wait_exponential_jitter(multiplier=RUNNER_FIRST_PAUSE, max=RUNNER_LONGEST_PAUSE,
                                     jitter=0.5),
        stop=stop_never if give_up_after is None else stop_after_delay(give_up_after),
        before_sleep=_log_failure(what, log),
        reraise=True,
    )


#: How many times an idempotent transfer is tried before it fails.
UPLOAD_ATTEMPTS = 3


def uploads(what: str, log: logging.Logger, attempts: int = UPLOAD_ATTEMPTS) -> AsyncRetrying:
    """An idempotent transfer that got no answer (``Unavailable``: refused, reset,
    stalled past its timeout, a proxy's 502-504) is tried again, ``attempts`` times
    in all, after pauses of 1, 2, 4... seconds (with jitter); then the last error is
    raised. Each failure is logged as a warning naming ``what``."""
    return AsyncRetrying(
        retry=retry_if_exception_type(Unavailable),
        wait=wait_exponential_jitter(initial=1.0, max=10.0, jitter=0.5),
        stop=stop_after_attempt(attempts),
        before_sleep=_log_failure(what, log),
        reraise=True,
    )


#: How long a follower keeps reconnecting to a server it has not heard from.
RECONNECT_GIVE_UP = 60.0


def reconnects(what: str, log: logging.Logger, silent_for: Callable[[], float]
               ) -> AsyncRetrying:
    """A stream that broke (``Unavailable``) is opened again, after the runner's pauses,
    until ``silent_for()`` (seconds since the server was last heard) passes
    RECONNECT_GIVE_UP; then the last error is raised. Failures are logged as warnings."""
    return AsyncRetrying(
        retry=retry_if_exception_type(Unavailable),
        wait=wait_exponential_jitter(multiplier=RUNNER_FIRST_PAUSE, max=RUNNER_LONGEST_PAUSE,
                                     jitter=0.5),
        stop=lambda state: silent_for() > RECONNECT_GIVE_UP,
        before_sleep=_log_failure(what, log),
        reraise=True,
    )


def deliveries(attempts: int, first_pause: float) -> AsyncRetrying:
    """A delivery that answers True when it went through: up to ``attempts`` tries, the
    pauses doubling from ``first_pause``; the last answer (False) when none went through.
    The caller records and logs each attempt (it knows why one failed)."""
    return AsyncRetrying(
        retry=retry_if_result(lambda delivered: not delivered),
        wait=wait_exponential(multiplier=first_pause, exp_base=2),
        stop=stop_after_attempt(max(1, attempts)),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else False,
    )


def provider_calls(what: str, log: logging.Logger, attempts: int,
                   first_pause: float) -> AsyncRetrying:
    """A cloud API call that may pass on another try (rate limited, a server error, no
    answer): ``attempts`` tries in all; the last error is raised. A 4xx other than 429
    is the provider's settled answer and is raised at once."""
    backoff = wait_exponential_jitter(multiplier=first_pause, max=30.0, jitter=first_pause)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        asked = error.retry_after if isinstance(error, ProviderError) else 0.0
        return max(asked, backoff(state))

    return AsyncRetrying(
        retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
        wait=wait,
        stop=stop_after_attempt(max(1, attempts)),
        before_sleep=_log_failure(what, log),
        reraise=True,
    )


async def retried(policy: AsyncRetrying, call: Callable[P, Awaitable[T]], *args: P.args,
                  **kwargs: P.kwargs) -> T:
    """``await call(*args, **kwargs)``, tried again as ``policy`` says."""
    return cast(T, await policy(call, *args, **kwargs))

"""The Anthropic API for `swarm plan`: its settings, one streamed request, its errors, the tokens.

Retries and backoff on 429/5xx are the SDK's own (``max_retries``); an `error` event after the
200 is retried here. The answer is streamed, so an endpoint that goes silent is noticed after
``timeout`` seconds, not after the whole answer's worst-case time. Every failure becomes one
SwarmError that names the endpoint and the next step, the key scrubbed from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worktree_swarm.core.errors import BadInputError, SwarmError
from worktree_swarm.core.text import is_http_url
from worktree_swarm.infra import redact
from worktree_swarm.plan.prompt import TOOL, TOOL_NAME

if TYPE_CHECKING:  # the SDK takes a second or more to import: only once a request is made
    import anthropic
    from anthropic.lib.streaming import MessageStream
    from anthropic.types import Message, MessageParam, TextBlockParam

DEFAULT_MAX_RETRIES = 4
MAX_RETRIES_ENV = "SWARM_API_MAX_RETRIES"
DEFAULT_TIMEOUT = 90
TIMEOUT_ENV = "SWARM_API_TIMEOUT"
CONNECT_TIMEOUT = 10.0
MAX_TOKENS = 8192


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    """How to reach the Anthropic API; the key is never shown in a repr."""

    api_key: str = field(repr=False)
    base_url: str | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    timeout: float = DEFAULT_TIMEOUT  # seconds without a byte of the answer


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Tokens spent on the plan, summed over requests."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


def api_settings(
    *, api_url: str | None = None, environ: Mapping[str, str] | None = None
) -> ApiSettings:
    """Read the key from ``ANTHROPIC_API_KEY`` and the base URL from *api_url* or the env."""
    if api_url == "":  # given, and empty: not taken for "not given"
        raise BadInputError(
            "--api-url is empty; give the Anthropic API's http(s) URL, or leave the option out"
        )
    env = os.environ if environ is None else environ
    key = env.get("ANTHROPIC_API_KEY", "").strip()
    if not key:
        raise BadInputError(
            "ANTHROPIC_API_KEY is not set; export your Anthropic API key and run `swarm plan` again"
        )
    base_url = api_url or env.get("ANTHROPIC_BASE_URL") or None
    if base_url is not None and not is_http_url(base_url):
        where = "--api-url" if api_url else "ANTHROPIC_BASE_URL"
        raise BadInputError(f"{where}: {base_url!r} is not an http(s) URL")
    max_retries = _env_int(env, MAX_RETRIES_ENV, DEFAULT_MAX_RETRIES, low=0, high=10)
    timeout = _env_int(env, TIMEOUT_ENV, DEFAULT_TIMEOUT, low=1, high=3600)
    return ApiSettings(api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout)


def _env_int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise BadInputError(f"{name}: expected an integer {low}-{high}, got {text!r}")
    return int(text)


# Errors the API may send as an `error` event after its 200 (what a non-streamed request gets
# as 529, 429 or 500, which the SDK retries): the SDK retries only the request, so these are
# retried here, as often and about as patiently.
_RETRIED_IN_STREAM = frozenset({"overloaded_error", "rate_limit_error", "api_error"})
_STREAM_BACKOFF = 0.5  # seconds before the first retry, doubled each time, at most 8 s


def create(
    client: anthropic.Anthropic,
    settings: ApiSettings,
    *,
    model: str,
    system: list[TextBlockParam],
    messages: list[MessageParam],
) -> Message:
    """The answer to one streamed Messages API request for the plan tool, errors as ours."""
    import anthropic  # noqa: PLC0415 - imported by now (the client exists)

    where = settings.base_url or "the default endpoint"
    for retry in range(settings.max_retries + 1):
        try:
            with client.messages.stream(
                model=model,
                max_tokens=MAX_TOKENS,
                system=system,
                messages=messages,
                tools=[TOOL],
                tool_choice={"type": "tool", "name": TOOL_NAME, "disable_parallel_tool_use": True},
            ) as stream:
                reply = _read_answer(stream, settings, where)
            break
        except anthropic.APIStatusError as exc:  # on the request, or an `error` event
            if retry < settings.max_retries and _in_stream_and_passing(exc):
                time.sleep(min(_STREAM_BACKOFF * 2**retry, 8.0))
                continue
            raise _status_error(exc, settings) from None
        except anthropic.APITimeoutError:
            raise SwarmError(
                f"the Anthropic API at {where} did not answer"
                f" ({_silence(settings, settings.max_retries + 1)});"
                " check the network, --api-url or ANTHROPIC_BASE_URL"
            ) from None
        except anthropic.APIConnectionError as exc:
            raise SwarmError(
                f"cannot reach the Anthropic API at {where} ({_scrub(str(exc), settings)});"
                " check the network, --api-url or ANTHROPIC_BASE_URL"
            ) from None
        except anthropic.APIError as exc:
            raise SwarmError(
                f"the Anthropic API answered with something that is not a message"
                f" ({_scrub(str(exc), settings)}); check --api-url or ANTHROPIC_BASE_URL"
            ) from None
    if not isinstance(reply, anthropic.types.Message):  # the SDK hands on what it got
        raise SwarmError(
            f"the Anthropic API answered with something that is not a message"
            f" ({type(reply).__name__}: {_scrub(str(reply), settings)[:80]});"
            " check --api-url or ANTHROPIC_BASE_URL"
        )
    return reply


def _in_stream_and_passing(exc: anthropic.APIStatusError) -> bool:
    """Whether *exc* is an `error` event the answer sent after its 200, of a passing kind."""
    body = exc.body
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return exc.status_code == 200 and kind in _RETRIED_IN_STREAM  # noqa: PLR2004


def _read_answer(stream: MessageStream, settings: ApiSettings, where: str) -> object:
    """The whole answer of a stream that opened with 200; what breaks it is one SwarmError.

    The SDK retries the request, not a broken answer: a transport error while reading arrives
    as the HTTP client's own exception, and a body that is no event stream as an assertion.
    """
    import anthropic  # noqa: PLC0415 - imported by now (the client exists)

    try:
        return stream.get_final_message()
    except anthropic.APIStatusError:
        raise
    except Exception as exc:  # noqa: BLE001 - every other failure means the same to the user
        kind = type(exc).__name__
        # The HTTP client's own ReadTimeout, or the SDK's APITimeoutError around it (which of
        # the two depends on where in the answer the silence fell).
        if kind.endswith("Timeout") or isinstance(exc, anthropic.APITimeoutError):
            what = f"stopped in the middle of its answer ({_silence(settings, 1)})"
        else:
            detail = f"{kind}: {_scrub(str(exc), settings)[:120]}" if str(exc) else kind
            what = f"broke off its answer or sent something that is not a message ({detail})"
        raise SwarmError(
            f"the Anthropic API at {where} {what}; try `swarm plan` again,"
            " or check --api-url or ANTHROPIC_BASE_URL"
        ) from None


def _silence(settings: ApiSettings, times: int) -> str:
    again = f", {times} times" if times > 1 else ""
    return f"nothing for {settings.timeout:g} s{again}; {TIMEOUT_ENV} sets the wait"


def _status_error(exc: anthropic.APIStatusError, settings: ApiSettings) -> SwarmError:
    import anthropic  # noqa: PLC0415 - imported by now (the client exists)

    detail = _scrub(_api_message(exc), settings)
    code = exc.status_code
    if isinstance(exc, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
        return BadInputError(
            f"Anthropic API rejected the key ({code}: {detail}); check ANTHROPIC_API_KEY"
        )
    if isinstance(exc, anthropic.RateLimitError):
        return SwarmError(
            f"Anthropic API rate limit ({code}: {detail}) persisted;"
            " wait a minute and run `swarm plan` again"
        )
    if isinstance(exc, anthropic.BadRequestError | anthropic.NotFoundError):
        return BadInputError(
            f"Anthropic API refused the request ({code}: {detail}); check --model and --api-url"
        )
    return SwarmError(f"Anthropic API error ({code}: {detail}); try `swarm plan` again later")


def _api_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = error.get("type")
        message = str(error["message"])
        return f"{kind}: {message}" if isinstance(kind, str) else message
    return exc.response.reason_phrase or "no details"


def _scrub(text: str, settings: ApiSettings) -> str:
    # Never let the key reach the terminal, even if an endpoint echoes it back: masked as the
    # manifest masks it.
    return " ".join(text.replace(settings.api_key, redact.REDACTED).split())[:300]


# The longest wait a `retry-after` of the API gets before the SDK tries again.
MAX_RETRY_WAIT = 60.0


def cap_retry_after(response: Any, *, limit: float) -> None:  # noqa: ANN401 - the SDK's httpx
    """Cut the waits *response* asks for (``retry-after``, ``retry-after-ms``) to *limit* s."""
    for name, unit in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        said = response.headers.get(name)
        if said is None:
            continue
        try:
            seconds = float(said) / unit
        except ValueError:  # an HTTP date: however far, no longer than the limit
            seconds = math.inf
        if not seconds <= limit:
            response.headers[name] = f"{limit * unit:g}"


def add_usage(usage: Usage, response: Message) -> Usage:
    """*usage* with *response*'s request and tokens added."""
    u = getattr(response, "usage", None)
    if u is None:  # an endpoint that does not say: the request still counts
        return dataclasses.replace(usage, requests=usage.requests + 1)
    return Usage(
        requests=usage.requests + 1,
        input_tokens=usage.input_tokens + _count(getattr(u, "input_tokens", 0)),
        output_tokens=usage.output_tokens + _count(getattr(u, "output_tokens", 0)),
        cache_read_tokens=usage.cache_read_tokens + _count(u.cache_read_input_tokens),
        cache_write_tokens=usage.cache_write_tokens + _count(u.cache_creation_input_tokens),
    )


_MAX_COUNT = 1 << 40  # tokens of one answer past any model's window: no count at all


def _count(value: object) -> int:
    """A token count as an endpoint said it; 0 for none, or what no count can be."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_COUNT:
        return 0
    return value

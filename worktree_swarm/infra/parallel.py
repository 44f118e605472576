"""Many independent git processes at once, their results in order."""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")

# One git process per item is the usual work: as many at once as there are cores, up to 8.
CORES = max(1, min(8, os.cpu_count() or 1))


def in_order(
    fn: Callable[[_T], _R], items: Sequence[_T], *, workers: int = CORES
) -> Generator[_R, None, None]:
    """*fn* of each item, in the items' order; up to *workers* at once, a few items ahead.

    A reader that stops early (output piped to ``head``) leaves only those few to finish. An
    exception from *fn* reaches the reader at that item's turn.
    """
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        ahead: collections.deque[Future[_R]] = collections.deque()
        try:
            for item in items:
                ahead.append(pool.submit(fn, item))
                if len(ahead) > 2 * workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            for future in ahead:
                future.cancel()

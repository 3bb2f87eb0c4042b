"""What one guest's calls did: counters the call path bumps (in C on the native path), read at scrape time."""

from __future__ import annotations

import array
from typing import Final

# Call counters (CallStats.counts, the layout both call paths write): per phase [calls, ns, a count per bucket, +Inf]
CALL_BUCKETS_NS: Final = (5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
                          5_000_000, 10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000, 1_000_000_000)
STATS_STRIDE: Final = 2 + len(CALL_BUCKETS_NS) + 1
STATS_SHORT: Final = 2 * STATS_STRIDE
STATS_OVERRUNS: Final = STATS_SHORT + 1  # handle_request calls stopped on the native path's synchronous first try
STATS_SYNC_AFTER: Final = STATS_SHORT + 2  # (the native path's) no synchronous try before this monotonic ns
STATS_OVERRAN_AT: Final = STATS_SHORT + 3  # 1 + the handle_request calls ended at the last overrun; 0: none yet
STATS_SIZE: Final = STATS_SHORT + 4


class CallStats:
    """What one guest's calls did: counted on the call path (in C on the native path), read at scrape time.

    `counts` holds plain integers the Core bumps when a call of handle_request or handle_response ends
    (calls, nanoseconds, a histogram of durations) or when handle_request answers itself; traps and new
    instances, which are rare, are counted in Python. Shared by every instance of a guest.
    """

    __slots__ = ("closed_pool_timeouts", "counts", "created", "skips", "traps")

    def __init__(self) -> None:
        self.counts = array.array("Q", bytes(8 * STATS_SIZE))
        self.traps: dict[tuple[str, str], int] = {}  # (export, cause) -> traps
        self.created: dict[str, int] = {}  # how instances started ("init", "snapshot") -> instances
        self.skips: dict[str, int] = {}  # cause -> calls of a fail_open guest skipped (asgi/failure.py)
        self.closed_pool_timeouts = 0  # pool timeouts of this guest's closed pools (open ones count their own)

    def calls(self, phase: int) -> int:
        """Calls of handle_request (phase 0) or handle_response (1) that ended."""
        return int(self.counts[phase * STATS_STRIDE])

    def histogram(self, phase: int) -> tuple[list[int], float]:
        """Cumulative counts per bound of CALL_BUCKETS_NS then +Inf, and the seconds of all calls."""
        base = phase * STATS_STRIDE
        buckets, total = [], 0
        for count in self.counts[base + 2:base + STATS_STRIDE]:
            total += count
            buckets.append(total)
        return buckets, self.counts[base + 1] / 1e9

    @property
    def short_circuits(self) -> int:
        return int(self.counts[STATS_SHORT])

    @property
    def sync_overruns(self) -> int:
        """handle_request calls the native path ran as one synchronous call and stopped after a whole tick: each
        started its request over with cooperative calls. Two within 5,000 calls make all of this guest's calls
        cooperative for the next 10 s."""
        return int(self.counts[STATS_OVERRUNS])

    def count_trap(self, export: str, cause: str) -> None:
        self.traps[export, cause] = self.traps.get((export, cause), 0) + 1


def count_call(counts: array.array[int], index: int, ns: int) -> None:
    """One call ended after ns nanoseconds (the Python call path's count; the native path counts in C)."""
    base = index * STATS_STRIDE
    bucket = 0
    while bucket < len(CALL_BUCKETS_NS) and ns > CALL_BUCKETS_NS[bucket]:
        bucket += 1
    counts[base] += 1
    counts[base + 1] += ns
    counts[base + 2 + bucket] += 1


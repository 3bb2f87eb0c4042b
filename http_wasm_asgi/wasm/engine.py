"""The one wasmtime engine of the process and its epoch ticker (the clock that ends guest slices)."""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Final

import wasmtime
from wasmtime import _ffi as ffi

from .. import _native
from .capi import VP

EPOCH_TICK_SECONDS: Final = 0.001  # a guest call yields to its caller at every tick: the slice length
# The native ticker wakes every tick while more than EPOCH_BUSY_SHARE of its wake-ups find a guest slice running
# (heavy guests); else it waits up to EPOCH_IDLE_SECONDS, woken by each slice of a call that yielded before: a
# call's first slice then yields within EPOCH_IDLE_SECONDS, its later ones within a tick.
EPOCH_IDLE_SECONDS: Final = 0.005
EPOCH_BUSY_SHARE: Final = 0.2
ENGINE_FINGERPRINT: Final = "epoch=1;opt=speed;fixed-memory"  # what compiled code depends on (cache keys)

_engine_lock = threading.Lock()
_engine: wasmtime.Engine | None = None


def get_engine() -> wasmtime.Engine:
    """The process's engine, made (and its ticker started) on first use."""
    global _engine
    with _engine_lock:
        if _engine is None:
            config = wasmtime.Config()
            config.epoch_interruption = True
            config.cranelift_opt_level = "speed"
            config.memory_may_move = False  # lets instances cache their memory's base address
            _engine = wasmtime.Engine(config)
            _start_ticker(_engine)
        return _engine


def _start_ticker(engine: wasmtime.Engine) -> None:
    """A thread that bumps the engine's epoch, for ever. Native when built: guest calls on the native path keep
    the GIL, so a Python thread could not tick while one runs; and it ticks only while guest slices run."""
    ext = _native.EXT
    if ext is not None:
        # its own reference to the engine, never freed: the thread outlives interpreter shutdown
        ticker_engine = ffi.wasmtime_engine_clone(engine.ptr())
        ext.start_ticker(ctypes.cast(ticker_engine, VP).value, int(EPOCH_TICK_SECONDS * 1e6),
                         int(EPOCH_IDLE_SECONDS * 1e6), EPOCH_BUSY_SHARE)
        return

    def tick() -> None:
        while True:
            time.sleep(EPOCH_TICK_SECONDS)
            engine.increment_epoch()

    threading.Thread(target=tick, name="http-wasm-epoch", daemon=True).start()

"""Prometheus metrics for an app of one's own (the public path of `server.metrics`)."""

from .server.metrics import *  # noqa: F403
from .server.metrics import __all__ as __all__

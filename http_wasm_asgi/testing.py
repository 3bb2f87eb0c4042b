"""Testing a guest: `GuestClient`, `Result`, `echo_app`, `serve` (the public path of `devkit.testing`)."""

from .devkit.testing import *  # noqa: F403
from .devkit.testing import __all__ as __all__

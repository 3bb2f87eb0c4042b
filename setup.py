"""Only the optional C accelerator lives here; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("http_wasm_asgi._fastpath", ["http_wasm_asgi/_fastpath.c"], optional=True)])

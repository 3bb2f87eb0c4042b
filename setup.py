"""Only the optional C of the native path (http_wasm_asgi/_native) is built here; the rest is in pyproject.toml."""

from glob import glob

from setuptools import Extension, setup

setup(ext_modules=[Extension("http_wasm_asgi._native._ext", sorted(glob("http_wasm_asgi/_native/*.c")),
                             depends=["http_wasm_asgi/_native/native.h"], optional=True)])

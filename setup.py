"""Optional C accelerator.  Metadata lives in pyproject.toml; if the extension cannot be
compiled the pure-Python package is installed (``optional=True``)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kcoro._speedups",
            ["src/kcoro/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "kcoro.ipc._fastring",
            ["src/kcoro/ipc/_fastring.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ]
)

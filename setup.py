"""Builds the Cython relay and ships the BPF C sources inside the package."""

import os
import shutil

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
# FASTPROXY_DEBUG=1 (`make build-debug`): the relay checks its invariants
# (src/fastproxy/includes/debug.h; what it holds is counted in every build). Only the
# C compile differs, so the generated C is the same for both builds.
DEBUG = os.environ.get("FASTPROXY_DEBUG") == "1"


class build_py_with_bpf(build_py):
    """Copy bpf/*.c into fastproxy/bpf so the steering module finds them at run time."""

    def run(self) -> None:
        super().run()
        src = os.path.join(HERE, "bpf")
        dst = os.path.join(self.build_lib, "fastproxy", "bpf")
        os.makedirs(dst, exist_ok=True)
        for name in sorted(os.listdir(src)):
            if name.endswith((".c", ".h")):
                shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


extension = Extension(
    "fastproxy._relay",
    ["src/fastproxy/_relay.pyx"],
    depends=["src/fastproxy/includes/atomics.h", "src/fastproxy/includes/system.pxd"]
    + [os.path.join("src/fastproxy/relay", n) for n in os.listdir(os.path.join(HERE, "src/fastproxy/relay"))],
    include_dirs=["src/fastproxy"],
    extra_compile_args=["-O2", "-Wno-unused-function"] + (["-O0", "-g"] if DEBUG else []),
    define_macros=[("FP_DEBUG", "1" if DEBUG else "0")],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
        include_path=["src"],
    ),
    cmdclass={"build_py": build_py_with_bpf},
)

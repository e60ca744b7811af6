"""Builds the Cython relay and ships the BPF C sources, their compiled images and the demo
config inside the package."""

import os
import shutil
import subprocess
import sys
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
# FASTPROXY_DEBUG=1 (`make build-debug`): the relay checks its invariants
# (src/fastproxy/includes/debug.h; what it holds is counted in every build). Only the
# C compile differs, so the generated C is the same for both builds.
DEBUG = os.environ.get("FASTPROXY_DEBUG") == "1"
# FASTPROXY_HARNESS=1 (`make build`, the tests' in-place build): the relay's test-only entry
# points (relay/harness.pxi) are compiled in. Wheels and sdist installs leave them out.
HARNESS = os.environ.get("FASTPROXY_HARNESS") == "1"
# FASTPROXY_BPF_IMAGES=skip: a wheel without the compiled BPF programs (a build that is
# not root or has no bcc); its steering then needs bcc and kernel headers at run time.
IMAGES = os.environ.get("FASTPROXY_BPF_IMAGES", "build")
DEBIAN_BCC = "/usr/lib/python3/dist-packages/bcc"


class build_py_with_bpf(build_py):
    """Copy bpf/*.c into fastproxy/bpf so the steering module finds them at run time,
    with their images compiled by bcc (loaded at run time without bcc), and the demo
    config into fastproxy/examples."""

    def run(self) -> None:
        super().run()
        src = os.path.join(HERE, "bpf")
        dst = os.path.join(self.build_lib, "fastproxy", "bpf")
        os.makedirs(dst, exist_ok=True)
        for name in sorted(os.listdir(src)):
            if name.endswith((".c", ".h")):
                shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
        examples = os.path.join(self.build_lib, "fastproxy", "examples")
        os.makedirs(examples, exist_ok=True)
        shutil.copy2(os.path.join(HERE, "examples", "demo.json"), examples)
        # An editable install runs from src/ and the repository's bpf/: nothing to ship.
        if not getattr(self, "editable_mode", False) and IMAGES != "skip":
            compile_bpf_images(src, dst)


def compile_bpf_images(src: str, dst: str) -> None:
    """bcc compiles (and loads once) every bpf/ program, in a child that can import it:
    the build's own interpreter, with Debian's bcc package linked in (as
    scripts/link-bcc.sh does for the venv) when it cannot already."""
    with tempfile.TemporaryDirectory() as linked:
        if os.path.isdir(DEBIAN_BCC):
            os.symlink(DEBIAN_BCC, os.path.join(linked, "bcc"))
        code = (
            f"import sys; sys.path[:0] = [{os.path.join(HERE, 'src')!r}, {linked!r}]; "
            "from fastproxy.steering.build import build_main; "
            f"build_main({src!r}, {dst!r})"
        )
        done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["?"])[-1]
        sys.exit(
            f"cannot compile the BPF programs for the wheel: {why}\n"
            "(building them needs root, bcc (python3-bpfcc) and kernel headers: "
            "scripts/install-build-deps.sh; FASTPROXY_BPF_IMAGES=skip builds a wheel "
            "without them, whose bpf steering then needs bcc at run time)"
        )
    print(done.stdout.strip())


extension = Extension(
    "fastproxy._relay",
    ["src/fastproxy/_relay.pyx"],
    depends=[
        "src/fastproxy/includes/atomics.h",
        "src/fastproxy/includes/system.pxd",
        "src/fastproxy/includes/openssl.pxd",
    ]
    + [
        os.path.join("src/fastproxy/relay", n)
        for n in os.listdir(os.path.join(HERE, "src/fastproxy/relay"))
    ],
    include_dirs=["src/fastproxy"],
    # TLS termination (relay/tls.pxi): Debian's libssl-dev to build, libssl3 to run.
    libraries=["ssl", "crypto"],
    extra_compile_args=["-O2", "-Wno-unused-function"] + (["-O0", "-g"] if DEBUG else []),
    define_macros=[("FP_DEBUG", "1" if DEBUG else "0")],
)


class build_ext_cythonized(build_ext):
    """Cythonize when the extension is built, not whenever setup.py runs: making the
    sdist needs no Cython run (and ships the .pyx, not generated C)."""

    def finalize_options(self) -> None:
        self.distribution.ext_modules = cythonize(
            [extension],
            compiler_directives={
                "language_level": "3",
                "boundscheck": False,
                "wraparound": False,
                "cdivision": True,
            },
            include_path=["src"],
            compile_time_env={"FP_HARNESS": HARNESS},
            # Each variant's C apart: cythonize regenerates only when a source is newer,
            # not when compile_time_env changes.
            build_dir=os.path.join("build", "cython-harness" if HARNESS else "cython"),
        )
        super().finalize_options()


setup(
    ext_modules=[extension],
    cmdclass={"build_py": build_py_with_bpf, "build_ext": build_ext_cythonized},
)

"""Building the native CPU kernels on first use: what the MSDA kernel (:mod:`msvision.ops.msda.cpu_ffi`)
and the oneDNN convolution (:mod:`msvision.ops.onednn.ffi`) share.

A kernel's shared library is compiled once per build key (a hash of everything it
depends on) into a cache directory; concurrent builds of one key are serialised by a
file lock, and the library is published by an atomic rename, so no reader ever loads a
half-written file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence


def env_disabled(variable: str) -> bool:
    """Whether the environment variable turns a kernel off ("off", "0", "false", "no")."""
    return os.environ.get(variable, "").strip().lower() in ("off", "0", "false", "no")


def find_compiler() -> str:
    """The C++ compiler: ``$CXX``, else ``c++``, ``g++``, ``clang++``."""
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")


def build_key(source: str, compiler: str, flags: Sequence[str], *extra: str) -> str:
    """A hash of the kernel's source, the compiler and its version, the flags, ``extra``
    and jaxlib's version (the FFI headers and ABI)."""
    import jaxlib

    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256()
    with open(source, "rb") as f:
        text = f.read().decode()
    for part in (text, compiler, version, " ".join(flags), *extra, jaxlib.__version__):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def compile_cached(directory: str, library_name: str, command: Sequence[str]) -> str:
    """``directory/library_name``, compiled by ``command`` (whose output is appended as
    ``-o <file>``) unless it exists; returns its path.

    Raises:
      RuntimeError: the compiler failed (its command and the end of its output).
    """
    os.makedirs(directory, exist_ok=True)
    library = os.path.join(directory, library_name)
    if os.path.exists(library):
        return library
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same key
        if os.path.exists(library):
            return library
        fd, partial = tempfile.mkstemp(suffix=".so.partial", dir=directory)
        os.close(fd)
        full = [*command, "-o", partial]
        result = subprocess.run(full, capture_output=True, text=True)
        if result.returncode != 0:
            os.unlink(partial)
            raise RuntimeError(f"{' '.join(full)} failed:\n{result.stderr[-4000:]}")
        os.chmod(partial, 0o755)  # mkstemp made it private; the cache may be shared
        os.replace(partial, library)  # atomic: readers never see a half-written library
    return library

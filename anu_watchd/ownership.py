"""Who may write the spool: its owner, root dropped to the owner, or a producer.

Every state file belongs to the owner of the spool root (the service user;
docs/operations.md, "Ownership"). A command that creates or moves state
files, run by anyone else, must not leave a file the service cannot replace:

    caller            state-writing command        producer's `emit`
    the owner         runs                         runs
    root              drops to the owner first     drops to the owner first
    anyone else       refused, exit 77             runs (the producers group)
    (root missing)    root: refused, exit 77; anyone else runs (a private spool)

``decide`` is the table; ``assume_owner`` acts on it. ``denied`` turns a
permission error into the one line a user sees with exit 77 (EX_NOPERM).
"""

from __future__ import annotations

import enum
import errno
import os
import pwd
from pathlib import Path

import attrs

from anu_watchd.errors import NotOwnerError


class Action(enum.Enum):
    PROCEED = "proceed"
    DROP = "drop"
    REFUSE = "refuse"


@attrs.frozen
class Owner:
    uid: int
    gid: int
    name: str


def decide(euid: int, owner: Owner | None, *, producer: bool = False) -> Action:
    """What a process of ``euid`` does before writing state under a root owned by ``owner``."""
    if owner is None:
        return Action.REFUSE if euid == 0 else Action.PROCEED
    if euid == owner.uid:
        return Action.PROCEED
    if euid == 0:
        return Action.DROP
    return Action.PROCEED if producer else Action.REFUSE


def owner_of(root: Path) -> Owner | None:
    """The owner of the spool root, or None if it does not exist yet."""
    try:
        st = root.stat()
    except FileNotFoundError:
        return None
    try:
        name = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        name = str(st.st_uid)
    return Owner(uid=st.st_uid, gid=st.st_gid, name=name)


def assume_owner(root: Path, *, producer: bool = False) -> None:
    """Drop to the owner of ``root`` if root, or raise NotOwnerError (exit 77) if not allowed."""
    owner = owner_of(root)
    action = decide(os.geteuid(), owner, producer=producer)
    if action is Action.DROP and owner is not None:
        _drop_to(owner)
    elif action is Action.REFUSE:
        raise NotOwnerError(errno.EPERM, _refusal(root, owner), str(root))


def _refusal(root: Path, owner: Owner | None) -> str:
    if owner is None:
        return (
            f"the spool root {root} does not exist; as root, create it owned by the service "
            "user (docs/operations.md, Install) or start the service once"
        )
    return (
        f"this command writes state owned by {owner.name}; "
        f"run it as that user (sudo -u {owner.name} anu-watchd ...)"
    )


def _drop_to(owner: Owner) -> None:
    """setgroups, setgid, setuid: the owner's groups, then its gid, then its uid."""
    try:
        groups = os.getgrouplist(owner.name, owner.gid)
    except (KeyError, OSError):
        groups = [owner.gid]
    os.setgroups(groups)
    os.setgid(owner.gid)
    os.setuid(owner.uid)


def permission_error(exc: BaseException) -> OSError | None:
    """The EACCES/EPERM behind ``exc`` (itself or a cause), or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.EACCES, errno.EPERM):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def denied(err: OSError) -> str:
    """One line for exit 77: the path, the access missing, and who the process is."""
    if isinstance(err, NotOwnerError):
        return err.strerror or str(err)
    path = Path(err.filename) if err.filename else None
    user = _user_name(os.geteuid())
    if path is None:
        return f"permission denied for {user}: {err.strerror or err}"
    return f"permission denied: {user} {_missing_access(path)}"


def _missing_access(path: Path) -> str:
    try:
        if path.is_dir():
            return f"cannot read or write the directory {path}"
        if path.exists():
            return f"cannot read {path}"
    except OSError:
        pass
    return f"cannot create files in {path.parent} (no write access)"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"

"""The open-files limit: raised from the soft to the hard limit at start, as servers do.

Most desktops start programs with a soft ``RLIMIT_NOFILE`` of 1024 and a much higher hard
limit; the soft value exists for old programs that use ``select()``, which we do not. At 1024
any local process holding a thousand connections to our port used to make ``accept`` fail
(issue 11 item 7). Both the supervisor and the worker call ``raise_to_hard`` first thing.
Stdlib only; a no-op where there is no ``resource`` module (Windows has no such limit).
"""

from __future__ import annotations

import sys

# macOS reports an unlimited hard limit but refuses a soft limit above OPEN_MAX (10240).
MACOS_OPEN_MAX = 10240


def raise_to_hard() -> tuple[int, int]:
    """Raise the soft open-files limit as far as allowed; return ``(before, after)``.

    ``(-1, -1)`` where the limit does not exist. Never raises: a limit we cannot change is
    the one we run with (the connection cap adapts to it).
    """
    if sys.platform == "win32":  # no such limit (the C runtime's is per-process, 8192)
        return (-1, -1)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    targets = [hard] if hard != resource.RLIM_INFINITY else []
    if sys.platform == "darwin" or not targets:
        targets.append(MACOS_OPEN_MAX)
    for target in targets:
        if soft != resource.RLIM_INFINITY and target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return (soft, target)
    return (soft, soft)


def soft_limit() -> int | None:
    """The current soft open-files limit, or None where there is none (or it is unlimited)."""
    if sys.platform == "win32":
        return None
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft

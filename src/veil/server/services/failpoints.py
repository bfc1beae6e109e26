"""Failpoints: a test hook that kills the node at a named point, to prove crash safety.

`failpoint(name)` does nothing unless the environment variable `VEIL_FAILPOINT` equals
`name`; then it sends SIGKILL to the current process, as a power cut would: no
`finally`, no rollback, no flush. The crash-safety tests start a node with
`VEIL_FAILPOINT=publish.before_commit` (or `publish.after_commit`), make it die inside
a publish, restart it on the same data and check that the release and its charge are
either both there or both absent. Never set it on a node that serves real users.

Points in use: `publish.before_commit`, `publish.after_commit`, `step.before_commit`,
`step.after_commit`.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV_VAR", "failpoint"]

ENV_VAR = "VEIL_FAILPOINT"


def failpoint(name: str) -> None:
    """Kill this process with SIGKILL if `VEIL_FAILPOINT` names this point."""
    if os.environ.get(ENV_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)

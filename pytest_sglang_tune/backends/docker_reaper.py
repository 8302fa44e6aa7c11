"""``python -m pytest_sglang_tune.backends.docker_reaper OWNER``: wait until the owner process dies, then remove
the containers it created.

The docker backend starts one reaper per pytest process (in its own session, so Ctrl-C in the terminal does not
reach it). When pytest ends normally it has already removed its containers and the reaper finds none; when the
process is SIGKILLed (an xdist worker that crashed, ``kill -9``), the reaper removes what it left, within a second.
"""

from __future__ import annotations

import sys
import time

POLL_S = 0.3


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pytest_sglang_tune.backends.docker_reaper HOST:PID:START", file=sys.stderr)
        return 2
    owner = argv[0]
    from pytest_sglang_tune.backends.docker_ops import owner_alive, sweep_dead_owners

    while owner_alive(owner):
        time.sleep(POLL_S)
    import docker

    try:
        client = docker.from_env(timeout=30)  # type: ignore[attr-defined]
        removed = sweep_dead_owners(client, only_owner=owner)
    except Exception as exc:  # the daemon is gone too: the next session's sweep will do it
        print(f"sglang-tune reaper: {exc}", file=sys.stderr)
        return 1
    if removed:
        print(f"sglang-tune reaper: removed {', '.join(removed)} (owner {owner} died)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A stand-in for a systemd socket unit: ``python socket_holder.py PATH COMMAND...``.

It binds and listens on the Unix socket PATH (0600) and keeps it for its whole life, like
systemd does. Whenever a connection is pending and COMMAND is not running, it starts COMMAND
with the listening socket as fd 3 and ``LISTEN_FDS=1``/``LISTEN_PID``, then waits for it to
exit. ``systemd-socket-activate`` starts its command only once (it execs into it), so it
cannot show what happens after the daemon stops; this can. Prints ``LISTENING`` once ready
and ``STARTED <pid>`` for each start. On SIGTERM it stops and reaps the running COMMAND,
then exits; it never unlinks PATH.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys

LISTEN_FD = 3  # SD_LISTEN_FDS_START


def main(argv: list[str]) -> int:
    path, command = argv[0], argv[1:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(64)
    print("LISTENING", flush=True)
    children: list[int] = []

    def stop(signum: int, frame: object) -> None:
        # Like systemd stopping the service with the socket: SIGTERM, then reap, so no
        # orphan is left to a PID 1 that may never reap it.
        for child in children:
            os.kill(child, signal.SIGTERM)
            os.waitpid(child, 0)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        select.select([sock], [], [])  # a connection is waiting in the backlog
        pid = os.fork()
        if pid == 0:
            if sock.fileno() == LISTEN_FD:
                os.set_inheritable(LISTEN_FD, True)  # dup2 onto itself keeps CLOEXEC
            else:
                os.dup2(sock.fileno(), LISTEN_FD, inheritable=True)
            env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
            os.execve(command[0], command, env)
        children[:] = [pid]
        print(f"STARTED {pid}", flush=True)
        os.waitpid(pid, 0)
        children.clear()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

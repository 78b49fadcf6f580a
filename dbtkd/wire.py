"""What the supervisor and its worker both rely on, defined once: the exit status that means
"retrying cannot help", the header of the readiness probe, the listen backlog and how long a
worker may take to become ready. Both sides import this module; dbtkctl reaches it through
``dbtkd.port``, so it stays stdlib only.
"""

from dbtkd.units import SECONDS

# The worker's "fatal configuration error" status (sysexits EX_CONFIG): the supervisor goes to
# ``failed`` at once instead of retrying.
EXIT_CONFIG = 78
# The supervisor's readiness probe carries the worker's nonce in this header; the worker echoes
# it, so the answer cannot come from an older worker still draining.
PROBE_HEADER = "x-dbtk-probe"
# Deep enough to hold every connection that arrives during a worker restart (~0.2 s).
LISTEN_BACKLOG = 1024
# A cold start on a slow disk, with room to spare; ``port`` and ``restart`` wait as long.
WORKER_READY_TIMEOUT = 30 * SECONDS

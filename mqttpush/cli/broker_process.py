"""The broker process of ``mqttpush serve`` (mqttpush.server.DualProcessServer starts it as
``python -m mqttpush.cli.broker_process FD LOG_LEVEL LOG_FORMAT``; not a command to run by hand).

It logs like its parent, to the same stderr. SIGINT and SIGTERM are left to the parent, which
first publishes what it accepted through this process and then tells it to stop; if the parent
dies, the socket pair closes and this process exits.
"""

from __future__ import annotations

import signal
import sys

from mqttpush.cli import logs


def main(argv: list[str] | None = None) -> None:
    import uvloop

    from mqttpush.server import run_broker_process

    fd, level, fmt = (argv if argv is not None else sys.argv[1:])[:3]
    logs.configure(level, fmt)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    uvloop.run(run_broker_process(int(fd)))


if __name__ == "__main__":
    main()

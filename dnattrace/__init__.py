"""dnattrace: eBPF tracing for kernel packet-drop attribution (Docker DNAT, netfilter, routing)."""
import os as _os
import signal as _signal
import sys as _sys

__version__ = "0.1.0"


def _early_stop(signum, frame):
    """SIGINT or SIGTERM while the command line interface is still being imported: nothing was made yet,
    so end at once with the code the README gives (watch and drops: 0, the signal is how they stop;
    others: 128 + the signal), instead of a traceback from inside an import. cli.main() puts its own
    handling in place as soon as it runs."""
    command = next((a for a in _sys.argv[1:] if not a.startswith("-")), None)
    _os._exit(0 if command in ("watch", "drops") else 128 + signum)


# Only as the program (`python -m dnattrace.cli`: runpy imports this package while argv[0] is still
# "-m"; the console script `dnattrace`), never when a test or another program imports the package.
if _sys.argv and (_sys.argv[0] == "-m" or _os.path.basename(_sys.argv[0]) == "dnattrace"):
    for _sig in (_signal.SIGINT, _signal.SIGTERM):
        if _signal.getsignal(_sig) is not _signal.SIG_IGN:
            _signal.signal(_sig, _early_stop)

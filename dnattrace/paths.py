"""Where dnattrace keeps what outlives one run: lab state, the records of what a run made, the cache of
this boot's capability trials. DNATTRACE_RUN_DIR moves it (the tests use their own)."""
import os

RUN_DIR = os.environ.get("DNATTRACE_RUN_DIR", "/run/dnattrace")

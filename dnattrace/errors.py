"""User-facing errors: each one is printed as a single sentence with a defined exit code, never a traceback."""

EXIT_OK = 0
EXIT_FAULT = 1        # diagnose: a fault was found and explained
EXIT_USAGE = 2        # bad input: unknown container, bad port, unknown namespace, ...
EXIT_CANNOT_OBSERVE = 3  # not root, no BTF, no tracefs, a probe the kernel refuses with no fallback


class DnattraceError(Exception):
    """An error a user can act on; str() is the one line that is printed."""

    exit_code = EXIT_USAGE


class UsageError(DnattraceError):
    exit_code = EXIT_USAGE


class CannotObserve(DnattraceError):
    exit_code = EXIT_CANNOT_OBSERVE

"""The one error type for mistakes a user can make (bad data, bad params, bad requests)."""


class BrainTumorError(Exception):
    """A problem the user can fix. The message says what was wrong, where, and what to do.

    The CLI and the stage scripts print it without a traceback and exit with status 2.
    """


class ConfigError(BrainTumorError):
    """params.yaml (or a `-S key=value` override) holds an unknown key, a wrong type or a bad value."""


class DataError(BrainTumorError):
    """The dataset on disk cannot be used as it is."""


def escaped(name: object) -> str:
    """A file, member or class name as it may be printed: control characters (newline, tab, CR, ESC, ...) shown
    as escapes (`\\n`, `\\x1b`), so that a crafted name cannot forge output lines or drive the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(name))

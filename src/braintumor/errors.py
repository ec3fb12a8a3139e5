"""The one error type for mistakes a user can make (bad data, bad params, bad requests)."""


class BrainTumorError(Exception):
    """A problem the user can fix. The message says what was wrong, where, and what to do.

    The CLI and the stage scripts print it without a traceback and exit with status 2.
    """


class ConfigError(BrainTumorError):
    """params.yaml (or a `-S key=value` override) holds an unknown key, a wrong type or a bad value."""


class DataError(BrainTumorError):
    """The dataset on disk cannot be used as it is."""

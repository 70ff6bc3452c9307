"""Errors that stop a command with a message instead of a traceback."""


class ConfigError(ValueError):
    """An invalid config value, or a resource that does not fit the config;
    the message names the field and says what to do."""

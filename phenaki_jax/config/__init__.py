"""Configs: `parsing` builds them (variants, common fields, config files), `validation` checks
them. Both raise `ConfigError`, whose message names the offending field."""


class ConfigError(ValueError):
    """An impossible or malformed config; the message names the offending field."""

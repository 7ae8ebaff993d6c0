"""Errors raised for bad shard data."""


class ShardError(ValueError):
    """A shard file or manifest is missing, unreadable, corrupt or inconsistent.

    The message always names the file and says what to do about it.
    """

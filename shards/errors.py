"""The project's user-facing errors.

:class:`FmaGenreError` is the one root of every error the *user* can fix: bad
input (a missing or damaged file, a path that does not exist), bad data (a shard
that disagrees with its manifest, a corrupt checkpoint) or bad settings (an
unknown option value). Every command (``python -m preprocess ...``,
``python -m train ...``) reports it in one line, ``error: <message>``, and
exits with status 2 (see :mod:`shards.cli`). Its message names the file or
setting, the problem and the fix.

Anything else that escapes a command is a bug and is shown with its traceback.
"""


class FmaGenreError(Exception):
    """Something the user can fix: bad input, bad data or bad settings.

    Commands report it in one line (``error: <message>``, no traceback) and exit 2.
    Subclass it for each kind of user-caused error; raise plain built-in
    exceptions (or let them propagate) only for programming errors.
    """


class ShardError(FmaGenreError, ValueError):
    """A shard file or manifest is missing, unreadable, corrupt or inconsistent.

    The message always names the file and says what to do about it.
    (Also a ``ValueError``, as it was before :class:`FmaGenreError` existed.)
    """

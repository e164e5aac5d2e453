"""The one exception type the engine raises for a user's mistake (bad file, bad config, bad shape).

The CLI prints it as a single line `error: ...` and exits with status 2; anything else is a bug.
"""


class EngineError(Exception):
    """A problem with the user's input, with a message that says what to do next."""

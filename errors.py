"""The exception type for mistakes in what the user gave: a flag, a file, the data.

The scripts print such errors as one `error:` line (see `cli.run_cli`); every other exception,
e.g. a shape bug in a module under lib/, keeps its full traceback. It subclasses ValueError so
that code catching ValueError around a bad value keeps working.
"""


class UserInputError(ValueError):
    """A problem with the user's input, with a message that says what to change."""

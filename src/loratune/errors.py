"""The one exception type for mistakes a user can make (bad file, bad name, bad option).

The CLI prints its message as one line and exits non-zero; any other exception is our bug and keeps its traceback.
"""


class LoratuneError(Exception):
    """A problem the user can fix; the message names the file/record/option and says what to do."""

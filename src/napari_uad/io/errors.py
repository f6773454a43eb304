"""Errors raised for bad user input."""


class InputError(ValueError):
    """Bad user input (file, array or option); the message is one line that says what to do.

    The command line prints it without a traceback and exits with status 2; the widgets show it
    in a notification.
    """

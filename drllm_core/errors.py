"""The base of every error drllm reports to a user: the message says what was wrong, where, and what to do.
Pipeline scripts print these without a traceback and exit non-zero; anything else is a bug."""


class DrllmError(Exception):
    pass

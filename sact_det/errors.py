"""Errors whose message is the whole story.

An :class:`InputError` is a problem with what the user gave: a file, a config
key, a command-line argument, a checkpoint. Its message names it and says what
was expected, so the command-line tools print it as one ``error: ...`` line
instead of a traceback (:mod:`sact_det.cli`). The subclasses also derive from
the built-in exception a caller would expect (``FileNotFoundError``,
``ValueError``, ...), so ``except ValueError`` keeps working.
"""

__all__ = ["InputError", "InputFileNotFoundError", "InputKeyError", "InputValueError",
           "NonFiniteOutputError"]


class InputError(Exception):
    """A problem with the user's input, explained by its message."""

    def __str__(self):
        # KeyError would quote the message; an explanation reads better bare.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputFileNotFoundError(InputError, FileNotFoundError):
    pass


class InputKeyError(InputError, KeyError):
    pass


class InputValueError(InputError, ValueError):
    pass


class NonFiniteOutputError(InputError, FloatingPointError):
    """The model produced NaN or infinity at inference: its weights are broken.
    The message names the block or head where it first happened."""

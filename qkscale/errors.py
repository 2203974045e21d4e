"""Errors a user can cause: one-line messages that the CLI prints before exiting with status 2."""


class QKScaleError(Exception):
    """Base class of every error caused by the user's input."""


class ModelError(QKScaleError):
    """The model cannot be loaded or its architecture is not supported."""


class CorpusError(QKScaleError):
    """The corpus is missing, empty or unreadable."""


class StoreError(QKScaleError):
    """The store is missing, incomplete, foreign or asked for something it does not hold."""


class NonFiniteError(QKScaleError):
    """Vectors hold NaN or infinity, or a value that overflows the store's dtype; the message says where."""


class OptionError(QKScaleError):
    """An option has a value that cannot be used."""


class QKScaleWarning(UserWarning):
    """Something the user should know that does not stop the work (skipped files, ...)."""

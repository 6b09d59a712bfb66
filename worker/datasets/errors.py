"""The one error every data-set problem raises, so a command line can report it in one line."""


class DatasetError(Exception):
    """A data set is missing, malformed, unknown, or too small for what was asked of it."""

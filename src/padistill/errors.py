"""User-facing errors.

Everything a user can get wrong (a missing file, a malformed buffer, an unknown key) raises
`PadistillError` with one line that names the file or field and what was expected. The CLI prints
that line and exits with status 2 instead of showing a traceback.
"""


class PadistillError(ValueError):
    """A problem with user input (files, config, arguments), explained in one line."""

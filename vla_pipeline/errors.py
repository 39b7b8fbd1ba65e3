"""One exception type for every user-facing failure: the CLI prints it and exits 1."""


class PipelineError(Exception):
    """A clear, user-facing error (bad params, foreign data, broken checkpoint, ...)."""

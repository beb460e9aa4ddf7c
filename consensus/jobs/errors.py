"""The one error type of job rules."""


class JobError(ValueError):
    """A job tx that breaks a rule; raised before anything is written (a TxError)."""

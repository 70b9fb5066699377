"""The one exception type gradc raises for bad specs, data and divergence."""


class GradcError(ValueError):
    """A spec, data set or run that gradc cannot handle.

    The message names the symbol, shape or function at fault.

    >>> raise GradcError("symbol 'q' is neither a parameter, an input nor a target")
    Traceback (most recent call last):
    ...
    gradc.errors.GradcError: symbol 'q' is neither a parameter, an input nor a target
    """

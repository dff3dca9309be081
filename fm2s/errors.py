"""The exception types for bad input: the CLI prints their message as one line."""

from __future__ import annotations


class FM2SError(ValueError):
    """Bad input or options. The message names the problem and the fix."""


class ParameterError(FM2SError):
    """A bad value of one named parameter of a library function.

    The message speaks of the parameter (``train_planes=0: ...``); the command line
    words it as its flag (``--train-planes 0: ...``) from :attr:`name` and :attr:`value`.
    A ``value`` of None means the parameter is missing.
    """

    def __init__(self, name: str, value: object, problem: str) -> None:
        self.name, self.value, self.problem = name, value, problem
        super().__init__(f"{name}={value!r}: {problem}" if value is not None
                         else f"{name}: {problem}")

    def __reduce__(self):  # picklable, so it travels back from dask workers
        return type(self), (self.name, self.value, self.problem)

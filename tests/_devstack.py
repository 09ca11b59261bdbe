"""``python -m darktower``'s stack in-process for tests: see :func:`tests._stack.dev_stack`."""

from tests._stack import START_S, dev_stack

__all__ = ["START_S", "dev_stack"]

"""The project's exception base and the errors shared across subpackages.

Every exception ActiveLabel raises on purpose derives from :class:`ActiveLabelError`, so a
caller (the command line above all) can tell "a condition the user can act on, with a message
that says which" from a bug.  Library code raises; only :func:`activelabel.cli.main` turns an
error into one line on stderr and an exit code.  Subclasses also derive from the built-in
exception they refine (``ValueError``, ``RuntimeError``) where callers catch that.
"""

from __future__ import annotations


class ActiveLabelError(Exception):
    """Base of every ActiveLabel error: the message is one line a user can act on."""


class UsageError(ActiveLabelError):
    """A mistake in a command's input (a missing folder, a conflicting option)."""


class ConfigError(ActiveLabelError, ValueError):
    """A configuration value that cannot be used; the message names the key."""

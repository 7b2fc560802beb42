"""The one exception type every wing raises for a mistake the user can fix (see cli/errors.py)."""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input whose message already says what to do."""

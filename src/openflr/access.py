"""Who may see and restore what: roles, restore scopes and file-extension rules.

The roles are Enterprise Manager's. A Portal Administrator sees every machine. A Restore Operator
(and a Portal User) sees only the machines of their restore scope, given as names or glob patterns
(``web-*``); restore points of other machines are left out of every list and answer 403 when asked
for by id. Per user, downloads can be limited to some file extensions or refuse others.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = ["ROLES", "Access", "normalise_extensions"]

ROLES = ("PortalAdministrator", "RestoreOperator", "PortalUser")


def normalise_extensions(values: Iterable[str]) -> tuple[str, ...]:
    """``docx``, ``.DOCX`` and ``*.docx`` all mean ``.docx``."""
    result = []
    for value in values:
        text = value.strip().lower().lstrip("*")
        if text:
            result.append(text if text.startswith(".") else f".{text}")
    return tuple(dict.fromkeys(result))


@dataclass(frozen=True)
class Access:
    """What one user may do."""

    user: str
    role: str = "PortalAdministrator"
    scope: tuple[str, ...] = ()
    allowed_extensions: tuple[str, ...] = ()
    denied_extensions: tuple[str, ...] = ()

    @property
    def unrestricted(self) -> bool:
        """Whether the user sees every machine."""
        return self.role == "PortalAdministrator"

    def sees(self, machine: str) -> bool:
        """Whether a machine is in the user's restore scope."""
        if self.unrestricted:
            return True
        name = machine.lower()
        return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in self.scope)

    def may_download(self, file_name: str) -> bool:
        """Whether the extension rules let the user download a file of this name."""
        name = file_name.lower()
        if self.allowed_extensions and not name.endswith(self.allowed_extensions):
            return False
        return not (self.denied_extensions and name.endswith(self.denied_extensions))

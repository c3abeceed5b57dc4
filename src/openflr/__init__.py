"""openflr: guest file-level restore from machine backups over the Enterprise Manager REST API."""

from __future__ import annotations

__version__ = "0.1.0"

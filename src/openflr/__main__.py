"""``python -m openflr``: the same as the ``openflr`` command."""

from __future__ import annotations

from openflr.cli import main

main()

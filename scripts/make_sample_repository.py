"""Build the small sample repository that ships with openflr (``openflr serve`` with no options).

Two machines, each one restore point, made by real tools (mkntfs, wimlib, mkfs.fat, mkfs.ext4,
sgdisk, qemu-img) through the test fixture builder, then stored as compressed QCOW2 so the images
stay small in the repository:

- ``demo-pc``: a GPT disk with an NTFS volume (``C:``) and a FAT32 volume (``D:``);
- ``demo-linux``: a GPT disk with ext2 ``/boot`` and an ext4 root, assembled by ``/etc/fstab``.

Run: ``python scripts/make_sample_repository.py`` (writes ``src/openflr/sample_repository``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from tests.fixtures import images  # noqa: E402

TARGET = PROJECT / "src" / "openflr" / "sample_repository"
WHEN = "2026-11-30T220000Z"


def demo_tree(root: Path) -> None:
    """A few documents a user might want back."""
    files = {
        "Documents/Quarterly report.txt": "Q3 revenue grew 12 % on the year.\n" * 40,
        "Documents/Budget & plans #2026.csv": "item;amount\nservers;12000\nbackup;3400\n",
        "Documents/Résumé – naïve café.txt": "Non-ASCII names survive the round trip.\n",
        "Pictures/readme.txt": "Holiday pictures would live here.\n",
        "notes.txt": "Restored by openflr.\n",
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "Pictures" / "pattern.bin").write_bytes(bytes(range(256)) * 512)
    # Files older than the restore point (2026-11-30 22:00 UTC), as in a real backup.
    stamp = 1764500000  # 2025-11-30 10:53:20 UTC
    for path in [root, *root.rglob("*")]:
        os.utime(path, (stamp, stamp))


def main() -> int:
    missing = images.missing_tools()
    if missing:
        print(f"missing tools: {', '.join(missing)}", file=sys.stderr)
        return 1
    if TARGET.exists():
        shutil.rmtree(TARGET)
    TARGET.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="openflr-sample-") as tmp:
        source = Path(tmp) / "tree"
        demo_tree(source)
        images.build_windows_point(TARGET, source, machine="demo-pc", when=WHEN, fmt="raw")
        images.build_linux_point(TARGET, source, machine="demo-linux", when=WHEN, fmt="raw")
    for raw in sorted(TARGET.rglob("*.img")):
        image = raw.with_suffix(".qcow2")
        images.convert(raw, image, "qcow2", compressed=True)
        raw.unlink()
        print(f"{image.relative_to(PROJECT)}: {image.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

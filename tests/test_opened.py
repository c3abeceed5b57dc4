"""Opened restore points: shared by mounts, kept open a grace period, closed when they must be."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from openflr.catalog import RestorePoint
from openflr.engine import ImageSource
from openflr.opened import OpenedPoints


class FakeOpened:
    """Stands in for an opened restore point: counts whether it was closed."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class Opener:
    """Opens fake restore points and remembers every one it opened."""

    def __init__(self) -> None:
        self.opened: list[FakeOpened] = []

    def __call__(self, source: ImageSource) -> FakeOpened:
        item = FakeOpened(source)
        self.opened.append(item)
        return item


def restore_point(folder: Path, machine: str = "box") -> RestorePoint:
    image = folder / machine / "2026-11-30T220000Z" / "disk0.raw"
    if not image.exists():
        image.parent.mkdir(parents=True)
        image.write_bytes(b"\0" * 4096)
    return RestorePoint(
        id=f"id-{machine}",
        machine=machine,
        created=datetime(2026, 11, 30, 22, tzinfo=UTC),
        source=ImageSource((image,)),
        backup_name=machine,
        file_name=image.name,
    )


def points(opener: Opener, keep_open: float, max_idle: int = 4) -> OpenedPoints:
    return OpenedPoints(keep_open=keep_open, max_idle=max_idle, opener=opener)  # type: ignore[arg-type]


def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_mounts_of_one_point_share_one_opened_point(tmp_path: Path) -> None:
    opener = Opener()
    shared = points(opener, keep_open=0)
    point = restore_point(tmp_path)
    first, second = shared.acquire(point), shared.acquire(point)
    assert first is second and len(opener.opened) == 1
    shared.release(first)
    assert opener.opened[0].closed == 0
    shared.release(second)
    assert opener.opened[0].closed == 1


def test_without_a_grace_period_the_last_unmount_closes_the_point(tmp_path: Path) -> None:
    opener = Opener()
    shared = points(opener, keep_open=0)
    point = restore_point(tmp_path)
    shared.release(shared.acquire(point))
    assert opener.opened[0].closed == 1
    assert not shared.is_open(point.id)
    shared.acquire(point)
    assert len(opener.opened) == 2


def test_a_mount_within_the_grace_period_takes_the_point_still_open(tmp_path: Path) -> None:
    opener = Opener()
    shared = points(opener, keep_open=60)
    point = restore_point(tmp_path)
    first = shared.acquire(point)
    shared.release(first)
    assert opener.opened[0].closed == 0 and shared.is_open(point.id)
    assert shared.acquire(point) is first
    assert len(opener.opened) == 1
    shared.close_all()


def test_a_point_idle_past_its_grace_period_closes(tmp_path: Path) -> None:
    opener = Opener()
    shared = points(opener, keep_open=0.2)
    point = restore_point(tmp_path)
    started = time.monotonic()
    shared.release(shared.acquire(point))
    assert eventually(lambda: opener.opened[0].closed == 1)
    assert time.monotonic() - started >= 0.2
    assert not shared.is_open(point.id)
    shared.close_all()


def test_a_point_in_use_is_never_closed_by_the_grace_period(tmp_path: Path) -> None:
    opener = Opener()
    shared = points(opener, keep_open=0.05)
    point = restore_point(tmp_path)
    first = shared.acquire(point)
    shared.release(shared.acquire(point))  # a second mount comes and goes
    time.sleep(0.3)  # several grace periods: nothing may close a point a mount holds
    assert opener.opened[0].closed == 0
    shared.release(first)
    assert eventually(lambda: opener.opened[0].closed == 1)
    shared.close_all()


def test_only_so_many_points_stay_open_idle_and_the_longest_idle_goes_first(
    tmp_path: Path,
) -> None:
    opener = Opener()
    shared = points(opener, keep_open=60, max_idle=2)
    for machine in ("a", "b", "c"):
        shared.release(shared.acquire(restore_point(tmp_path, machine)))
    assert [o.closed for o in opener.opened] == [1, 0, 0]
    assert [shared.is_open(f"id-{m}") for m in "abc"] == [False, True, True]
    shared.close_all()


def test_a_point_whose_backup_file_changed_is_opened_afresh(tmp_path: Path) -> None:
    opener = Opener()
    shared = points(opener, keep_open=60)
    point = restore_point(tmp_path)
    first = shared.acquire(point)
    shared.release(first)
    image = point.source.paths[0]  # type: ignore[union-attr]
    image.write_bytes(b"\1" * 8192)  # the backup was rewritten in place

    second = shared.acquire(point)
    assert second is not first and len(opener.opened) == 2
    assert opener.opened[0].closed == 1
    shared.release(second)
    shared.close_all()


def test_a_point_whose_backup_file_changed_closes_with_its_last_mount(tmp_path: Path) -> None:
    opener = Opener()
    shared = points(opener, keep_open=60)
    point = restore_point(tmp_path)
    old = shared.acquire(point)
    point.source.paths[0].write_bytes(b"\1" * 8192)  # type: ignore[union-attr]
    new = shared.acquire(point)
    assert new is not old and opener.opened[0].closed == 0  # still mounted
    shared.release(old)
    assert opener.opened[0].closed == 1  # never kept open: nobody may get it again
    shared.release(new)
    assert opener.opened[1].closed == 0  # this one is kept open
    shared.close_all()


def test_an_idle_point_whose_backup_file_went_away_closes_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("openflr.opened._CHECK_INTERVAL", 0.05)
    opener = Opener()
    shared = points(opener, keep_open=60)
    point = restore_point(tmp_path)
    shared.release(shared.acquire(point))
    os.unlink(point.source.paths[0])  # type: ignore[union-attr]
    assert eventually(lambda: opener.opened[0].closed == 1)
    shared.close_all()


def test_shutdown_closes_the_idle_points_and_keeps_no_more_open(tmp_path: Path) -> None:
    opener = Opener()
    shared = points(opener, keep_open=60)
    idle, busy = restore_point(tmp_path, "idle"), restore_point(tmp_path, "busy")
    shared.release(shared.acquire(idle))
    held = shared.acquire(busy)
    shared.close_all()
    assert [o.closed for o in opener.opened] == [1, 0]
    shared.release(held)
    assert [o.closed for o in opener.opened] == [1, 1]

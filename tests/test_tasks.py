"""Tasks: a task started is Running until its work ends; a quick one can be answered Finished."""

from __future__ import annotations

import threading
from pathlib import Path

from openflr.store import Database
from openflr.tasks import TaskOutcome, TaskService


def test_a_task_that_ends_within_the_wait_is_returned_finished(tmp_path: Path) -> None:
    tasks = TaskService(Database(tmp_path / "openflr.db"))
    task = tasks.start("session-1", "MountRestorePoint", lambda n: TaskOutcome(True, "Ok", 3))
    assert task.state == "Running"

    settled = tasks.settle(task, timeout=10)
    assert (settled.id, settled.state, settled.success, settled.message) == (
        task.id,
        "Finished",
        True,
        "Ok",
    )
    assert settled.mount_number == 3
    assert tasks.get("session-1", task.id) == settled
    tasks.shutdown()


def test_a_task_still_running_after_the_wait_is_returned_running(tmp_path: Path) -> None:
    tasks = TaskService(Database(tmp_path / "openflr.db"))
    release = threading.Event()

    def slow(number: int) -> TaskOutcome:
        release.wait(10)
        return TaskOutcome(True, "Ok")

    task = tasks.start("session-1", "MountRestorePoint", slow)
    settled = tasks.settle(task, timeout=0.05)
    assert (settled.state, settled.success, settled.message) == ("Running", None, None)
    release.set()
    assert tasks.settle(task, timeout=10).state == "Finished"
    tasks.shutdown()


def test_settling_a_task_that_already_ended_reads_it_finished(tmp_path: Path) -> None:
    tasks = TaskService(Database(tmp_path / "openflr.db"))
    task = tasks.start("session-1", "MountRestorePoint", lambda n: TaskOutcome(False, "No disk"))
    tasks.settle(task, timeout=10)

    again = tasks.settle(task, timeout=0)
    assert (again.state, again.success, again.message) == ("Finished", False, "No disk")
    tasks.shutdown()

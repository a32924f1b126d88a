"""Issue 18, item 1: a loop that fails is logged once and restarted with a capped backoff; the
dispatcher keeps a batch the store refused and delivers it (and what came meanwhile) once the store
writes again. The store is the real SQLite; only the failure is injected, at the store boundary."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.dispatcher import Dispatcher
from bridge.intake import Intake
from bridge.supervisor import STABLE_AFTER, Supervised, Supervisors
from bridge.tasks import TaskRunner
from mqttpush.clock import ManualClock
from mqttpush.errors import StoreUnavailable
from mqttpush.models import App, DeliveryState, PushRequest
from mqttpush.store import Store
from mqttpush.store.messages import MessageRepository
from tests.bridge.test_dispatcher_memory import START, MemoryPublisher


class GatedSleep:
    """A supervisor's sleep that records each backoff and returns only when the test says so."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.sleeping = asyncio.Event()
        self._go = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        if seconds >= STABLE_AFTER:  # the "has it recovered" window: not a backoff
            await asyncio.Event().wait()
        self.delays.append(seconds)
        self.sleeping.set()
        await self._go.wait()
        self._go.clear()

    def wake(self) -> None:
        self.sleeping.clear()
        self._go.set()


def _failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "mqttpush.supervisor" and r.levelno >= logging.ERROR]


async def test_a_failing_loop_is_restarted_with_capped_backoff_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="mqttpush.supervisor")
    runs = 0
    healthy = asyncio.Event()
    forever = asyncio.Event()

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs <= 7:
            raise OSError(28, "No space left on device")
        healthy.set()
        await forever.wait()

    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        if seconds >= STABLE_AFTER:
            await asyncio.Event().wait()
        delays.append(seconds)  # no real waiting: the backoff's length is what is checked
        await asyncio.sleep(0)

    supervised = Supervised("dispatcher", loop, sleep, first_delay=0.1, max_delay=1.0)
    task = asyncio.create_task(supervised.run())
    try:
        await asyncio.wait_for(healthy.wait(), 5)
        assert supervised.running and supervised.restarts == 7
        assert delays[:7] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]  # doubling, capped
        (logged,) = _failures(caplog)  # once for the outage, not once per retry
        assert "loop=dispatcher" in logged.getMessage()
        assert "No space left on device" in logged.getMessage()
        assert logged.exc_info is not None and isinstance(logged.exc_info[1], OSError)
        assert supervised.failures == 7
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not supervised.running


async def test_a_loop_that_returns_is_restarted_and_a_new_cause_is_logged_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes: list[BaseException | None] = [None, ValueError("bad row"), ValueError("bad row")]
    running = asyncio.Event()

    async def loop() -> None:
        if outcomes:
            outcome = outcomes.pop(0)
            if outcome is not None:
                raise outcome
            return  # a loop must not end: counts as a failure
        running.set()
        await asyncio.Event().wait()

    async def sleep(seconds: float) -> None:
        if seconds >= STABLE_AFTER:
            await asyncio.Event().wait()
        await asyncio.sleep(0)

    supervisors = Supervisors()
    supervised = supervisors.start("receipts", loop, sleep)
    try:
        await asyncio.wait_for(running.wait(), 5)
        messages = [r.getMessage() for r in _failures(caplog)]
        assert len(messages) == 2, messages
        assert "the loop returned" in messages[0] and "bad row" in messages[1]
        assert supervised.restarts == 3 and supervisors.down() == {}
    finally:
        await supervisors.cancel()


async def test_down_names_a_loop_waiting_to_restart_with_its_cause() -> None:
    gate = GatedSleep()
    attempts = 0

    async def loop() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise StoreUnavailable("the store cannot write now: database or disk is full")
        await asyncio.Event().wait()

    supervisors = Supervisors()
    supervisors.start("scheduler", loop, gate)
    try:
        await asyncio.wait_for(gate.sleeping.wait(), 5)
        down = supervisors.down()
        assert list(down) == ["scheduler"] and "disk is full" in down["scheduler"]
        gate.wake()
        await asyncio.sleep(0)  # one turn of the loop: the restarted loop is running
        assert supervisors.down() == {}
    finally:
        await supervisors.cancel()


class FullDiskMessages(MessageRepository):
    """The real message queries; while the store's ``full`` is set, the ``published`` transition
    fails on the store thread with SQLite's own error for a full disk (as the commit would)."""

    def transition(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(self._store, "full", False):
            exc = sqlite3.OperationalError("database or disk is full")
            exc.sqlite_errorcode = sqlite3.SQLITE_FULL  # what sqlite3 sets on a real SQLITE_FULL
            raise exc
        return super().transition(*args, **kwargs)


class FullDiskStore(Store):
    """The real store, its messages' transitions failing while ``full`` is set."""

    full = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages = FullDiskMessages(self)


@pytest.fixture
async def wired(tmp_path: Path) -> AsyncIterator[tuple[FullDiskStore, Dispatcher, Intake, App]]:
    clock = ManualClock(START)
    store = FullDiskStore(tmp_path / "data", clock=clock)
    dispatcher = Dispatcher(store, MemoryPublisher(), clock)
    intake = Intake(store, dispatcher, TaskRunner(store, dispatcher, clock), clock)
    try:
        yield store, dispatcher, intake, store.apps.create_app("shop")
    finally:
        store.close()


async def test_the_dispatcher_survives_a_store_error_mid_batch_and_delivers_the_batch_after(
    wired: tuple[FullDiskStore, Dispatcher, Intake, App], caplog: pytest.LogCaptureFixture
) -> None:
    store, dispatcher, intake, app = wired
    publisher = dispatcher._publisher
    assert isinstance(publisher, MemoryPublisher)
    devices = [
        (await store.run(store.devices.register_device, app.app_key, f"install-{i}", "android")).device_id
        for i in range(2)
    ]

    async def push(device: str) -> str:
        request = PushRequest.model_validate(
            {"target": {"devices": [device]}, "notification": {"title": "Sale"}}
        )
        return str((await intake.push(app, request))["msg_id"])

    async def state(msg_id: str) -> DeliveryState:
        status = await store.run(store.messages.message_status, app.app_key, msg_id)
        assert status is not None
        (delivery,) = status.deliveries
        return DeliveryState(delivery.state)

    gate = GatedSleep()
    supervised = Supervised("dispatcher", dispatcher.run, gate)
    task = asyncio.create_task(supervised.run())
    try:
        store.full = True
        first = await push(devices[0])
        await asyncio.wait_for(gate.sleeping.wait(), 5)  # the batch failed: the loop waits to restart
        # The broker took the message, but the store could not say so: it stays pending.
        assert [p.envelope["id"] for p in publisher.published] == [first]
        assert await state(first) is DeliveryState.ACCEPTED
        assert isinstance(supervised.failure, StoreUnavailable)
        assert "disk is full" in str(supervised.failure)
        assert store.write_failure is not None
        second = await push(devices[1])  # submitted while the dispatcher is down

        store.full = False
        gate.wake()
        await asyncio.wait_for(dispatcher.drained(), 5)
        assert await state(first) is DeliveryState.PUBLISHED
        assert await state(second) is DeliveryState.PUBLISHED
        ids = [p.envelope["id"] for p in publisher.published]
        assert ids.count(first) == 2 and ids.count(second) == 1  # published again, devices dedupe
        assert store.write_failure is None
        assert len(_failures(caplog)) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

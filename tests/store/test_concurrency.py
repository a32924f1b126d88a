"""Two Store objects on one data dir (CLI next to a running server), and the store thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from mqttpush.store.store import Store
from tests.store.fake_clock import FakeClock

# Enough writes from each side that they collide; with no busy timeout this fails every run.
N = 200


def test_two_stores_on_one_dir_can_both_write_interleaved(data_dir: Path, clock: FakeClock) -> None:
    server = Store(data_dir, clock=clock)
    cli = Store(data_dir, clock=clock)
    try:
        made = []
        for i in range(5):
            made.append(server.apps.create_app(f"server-{i}").app_key)
            made.append(cli.apps.create_app(f"cli-{i}").app_key)
            server.devices.register_device(made[-1], "install-1", "android")
        assert {a.app_key for a in server.apps.list_apps()} == set(made)
        assert {a.app_key for a in cli.apps.list_apps()} == set(made)
        for key in made:
            assert server.apps.get_app(key) is not None
            assert cli.apps.get_app(key) is not None
    finally:
        cli.close()
        server.close()


def test_two_stores_on_one_dir_can_write_at_the_same_time(data_dir: Path, clock: FakeClock) -> None:
    server = Store(data_dir, clock=clock)
    cli = Store(data_dir, clock=clock)
    shared_app = server.apps.create_app("shared").app_key
    barrier = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []
    keys: dict[str, list[str]] = {"server": [], "cli": []}

    def work(name: str, store: Store) -> None:
        try:
            barrier.wait()
            for i in range(N):
                keys[name].append(store.apps.create_app(f"{name}-{i}").app_key)
                store.devices.register_device(shared_app, f"{name}-install-{i}", "android")
                store.apps.use_nonce(shared_app, f"{name}-nonce-{i:08d}", 300)
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n, s)) for n, s in (("server", server), ("cli", cli))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=15)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        listed = {a.app_key: a for a in cli.apps.list_apps()}
        assert set(listed) == {shared_app, *keys["server"], *keys["cli"]}
        assert len(listed) == 2 * N + 1
        assert listed[shared_app].devices == 2 * N
    finally:
        cli.close()
        server.close()


def open_fresh_dir_together(data_dir: Path, n: int) -> tuple[list[str], list[tuple[str, str]]]:
    """``n`` threads open a new data dir at once and create an app each; returns (errors, apps)."""
    barrier = threading.Barrier(n, timeout=10)
    errors: list[str] = []
    created: list[tuple[str, str]] = []

    def open_and_create() -> None:
        try:
            barrier.wait()
            store = Store(data_dir, clock=FakeClock())
            try:
                app = store.apps.create_app("shop")
                created.append((app.app_key, app.secret))
            finally:
                store.close()
        except Exception as e:  # collected and asserted by the caller
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=open_and_create) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    assert not any(t.is_alive() for t in threads)
    return errors, created


def test_stores_opening_a_new_dir_at_the_same_time(tmp_path: Path) -> None:
    # First start: `mqttpush serve` and `mqttpush app create` may open a fresh data dir together.
    # All must end up with one migrated schema and one master key, and no error.
    for trial in range(10):
        data_dir = tmp_path / f"data-{trial}"
        errors, created = open_fresh_dir_together(data_dir, 3)
        assert errors == [], f"trial {trial}"

        check = Store(data_dir, clock=FakeClock())
        try:
            for app_key, secret in created:
                app = check.apps.get_app(app_key)
                assert app is not None
                assert app.secret == secret
        finally:
            check.close()


async def test_run_executes_on_one_store_thread(store: Store) -> None:
    def where() -> tuple[str, int]:
        t = threading.current_thread()
        assert t.ident is not None
        return t.name, t.ident

    seen = [await store.run(where) for _ in range(3)]
    seen += await asyncio.gather(*(store.run(where) for _ in range(10)))

    names = {name for name, _ in seen}
    idents = {ident for _, ident in seen}
    assert len(names) == 1
    assert len(idents) == 1
    (name,) = names
    assert name.startswith("mqttpush-store")
    assert idents != {threading.get_ident()}  # not the event loop's thread


async def test_run_passes_arguments_and_returns_results(store: Store) -> None:
    app = await store.run(store.apps.create_app, "shop")
    reg = await store.run(store.devices.register_device, app.app_key, "install-1", "ios", locale="fr")
    assert reg.created is True
    device = await store.run(store.devices.get_device, reg.device_id)
    assert device is not None
    assert device.locale == "fr"
    assert await store.run(store.apps.get_app, app.app_key) == app

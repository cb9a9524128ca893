"""Config changes as a ConfigMap volume makes them: a new timestamped dir and an atomic `..data` symlink swap."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from deviceplugin.policy.configwatch import ConfigWatch

FIRST = {"resourceList": [{"resourceName": "intel_vf", "deviceType": "pci"}]}
SECOND = {"resourceList": [{"resourceName": "dpaa2_dprc", "deviceType": "fslmc"}]}


class ConfigMapVolume:
    """The layout kubelet's AtomicWriter keeps: `config.json -> ..data/config.json`, `..data -> ..<stamp>`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()

    @property
    def path(self) -> Path:
        return self.root / "config.json"

    def publish(self, content: dict) -> Path:
        return self.publish_text(json.dumps(content))

    def publish_text(self, text: str) -> Path:
        """Write a new version with this content and swap `..data` to it, as kubelet does on an update."""
        self.generation += 1
        new_dir = self.root / f"..2026_11_25_01_00_{self.generation:02d}.{os.getpid()}"
        new_dir.mkdir()
        (new_dir / "config.json").write_text(text)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        os.symlink(new_dir.name, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", self.root / "..data")
        if not self.path.is_symlink():
            os.symlink("..data/config.json", self.path)
        if old:
            shutil.rmtree(self.root / old)
        return new_dir / "config.json"


class Changes:
    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.contents: list[dict] = []
        self.seen = asyncio.Event()

    def __call__(self, path: Path) -> None:
        self.paths.append(path)
        self.contents.append(json.loads(path.read_text()))
        self.seen.set()


def _checked(watch: ConfigWatch) -> None:
    asyncio.run(watch.check())


def test_symlink_swap_is_reported_with_the_new_file(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "config")
    volume.publish(FIRST)
    changes = Changes()
    watch = ConfigWatch(volume.path, changes)
    watch.baseline()
    _checked(watch)
    assert changes.paths == []
    new_file = volume.publish(SECOND)
    _checked(watch)
    _checked(watch)
    assert changes.paths == [new_file]
    assert changes.contents == [SECOND]


def test_swap_to_identical_content_is_not_a_change(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "config")
    volume.publish(FIRST)
    changes = Changes()
    watch = ConfigWatch(volume.path, changes)
    watch.baseline()
    volume.publish(FIRST)
    _checked(watch)
    assert changes.paths == []


def test_in_place_rewrite_is_a_change(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(FIRST))
    changes = Changes()
    watch = ConfigWatch(path, changes)
    watch.baseline()
    path.write_text(json.dumps(SECOND) + " " * 10)  # another size: detected even with a coarse mtime
    _checked(watch)
    assert changes.contents == [SECOND]
    assert changes.paths == [path]


def test_missing_file_is_not_a_change_and_its_return_is(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(FIRST))
    changes = Changes()
    watch = ConfigWatch(path, changes)
    watch.baseline()
    path.unlink()
    _checked(watch)
    _checked(watch)
    assert changes.paths == []
    path.write_text(json.dumps(SECOND))
    _checked(watch)
    assert changes.contents == [SECOND]


def test_failing_reload_keeps_watching(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "config")
    volume.publish(FIRST)
    calls: list[Path] = []

    def reload(path: Path) -> None:
        calls.append(path)
        raise ValueError("invalid config")

    watch = ConfigWatch(volume.path, reload)
    watch.baseline()
    first = volume.publish(SECOND)
    _checked(watch)
    second = volume.publish(FIRST)
    _checked(watch)
    assert calls == [first, second]


def test_running_watch_sees_a_swap(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "config")
    volume.publish(FIRST)
    changes = Changes()

    async def scenario() -> None:
        watch = ConfigWatch(volume.path, changes, interval=0.05)
        watch.baseline()
        task = asyncio.create_task(watch.run())
        try:
            volume.publish(SECOND)
            await asyncio.wait_for(changes.seen.wait(), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert changes.contents == [SECOND]


def _symlink_loop(path: Path) -> None:
    """`path` → `path.loop` → `path`: every open and realpath of it fails with ELOOP."""
    if path.is_symlink() or path.exists():
        path.unlink()
    loop = path.with_name(path.name + ".loop")
    os.symlink(loop.name, path)
    os.symlink(path.name, loop)


@pytest.mark.hardening
def test_symlink_loop_is_skipped_once_and_the_next_valid_config_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17, finding 10: ELOOP used to end the watch for good, so no later config was ever applied."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(FIRST))
    changes = Changes()

    async def scenario() -> None:
        watch = ConfigWatch(path, changes, interval=0.01)
        watch.baseline()
        task = asyncio.create_task(watch.run())
        try:
            _symlink_loop(path)
            while "cannot be read" not in caplog.text:
                assert not task.done(), "the watch ended"
                await asyncio.sleep(0.01)
            for _ in range(5):  # more polls of the same loop: logged once, not every poll
                await watch.check()
            assert not task.done(), "the watch ended"
            path.unlink()
            path.write_text(json.dumps(SECOND))
            await asyncio.wait_for(changes.seen.wait(), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="deviceplugin.policy.configwatch"):
        asyncio.run(scenario())
    assert changes.contents == [SECOND]
    skipped = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(skipped) == 1
    assert "Too many levels of symbolic links" in skipped[0]
    assert "still watching" in skipped[0]


@pytest.mark.hardening
def test_each_poll_of_a_symlink_loop_is_a_skipped_poll(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One poll at a time: an error other than a missing file is a skipped poll (said once), not an exception."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(FIRST))
    changes = Changes()
    watch = ConfigWatch(path, changes)
    watch.baseline()
    path.unlink()
    _symlink_loop(path)
    with caplog.at_level(logging.WARNING, logger="deviceplugin.policy.configwatch"):
        _checked(watch)
        _checked(watch)
    path.unlink()
    path.write_text(json.dumps(SECOND))
    _checked(watch)
    assert changes.contents == [SECOND]
    assert len([r for r in caplog.records if "cannot be read" in r.getMessage()]) == 1

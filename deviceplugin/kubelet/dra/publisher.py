"""Keeps this node's ResourceSlices equal to its healthy devices, through the API server.

`publish(devices)` is cheap and never blocks: it records what the slices should say and wakes `run()` (a task),
which writes in a worker thread and retries with backoff when the API server fails. Only the latest wanted
content matters. Every change of content raises the pool's generation; at start the driver lists the slices
of its node and driver, continues above the highest generation it finds, and deletes every slice it no longer
needs (a leftover of an earlier run, or of more devices).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from deviceplugin.kubelet.dra.kubeapi import ApiError, KubeApi
from deviceplugin.kubelet.dra.slices import slice_documents

log = logging.getLogger(__name__)


class SlicePublisher:
    """The node's pool in ResourceSlices: desired state in, API writes out."""

    def __init__(
        self,
        api: Callable[[], KubeApi],
        node: str,
        driver: str,
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        self._api_factory = api
        self._api: KubeApi | None = None
        self.node = node
        self.driver = driver
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._on_published = on_published
        self._wanted: tuple[Mapping[str, Any], ...] | None = None
        self._published: tuple[Mapping[str, Any], ...] | None = None
        self.generation = 0  # of the content last written
        self._existing: dict[str, dict[str, Any]] | None = None  # our slices on the server, by name
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self.failures = 0

    def publish(self, devices: Sequence[Mapping[str, Any]]) -> None:
        """Take the devices the slices should list now (slice device documents, sorted by name)."""
        self._wanted = tuple(devices)
        if self._wanted != self._published:
            self._idle.clear()
            self._wake.set()

    @property
    def pending(self) -> bool:
        """Wanted content not yet on the API server."""
        return self._wanted is not None and self._wanted != self._published

    @property
    def published(self) -> tuple[Mapping[str, Any], ...] | None:
        return self._published

    async def wait_idle(self) -> None:
        """Until everything published so far is on the API server (tests, orderly shutdown)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Write until cancelled."""
        backoff = self._backoff_initial
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._wanted is not None and self._wanted != self._published:
                wanted = self._wanted
                try:
                    await asyncio.to_thread(self._write, wanted)
                except Exception as exc:
                    self.failures += 1
                    self._existing = None  # read them again: our picture of the server may be wrong
                    log.warning(
                        "publishing ResourceSlices of node %s failed (retrying in %.1fs): %s", self.node, backoff, exc
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._backoff_max)
                    continue
                backoff = self._backoff_initial
                self._published = wanted
                if self._on_published is not None:
                    self._on_published(len(wanted))
            if not self._wake.is_set():
                self._idle.set()

    def _client(self) -> KubeApi:
        if self._api is None:
            self._api = self._api_factory()
        return self._api

    def _write(self, devices: tuple[Mapping[str, Any], ...]) -> None:
        """One full write of the pool at a new generation: replace or create each slice, then delete the rest."""
        api = self._client()
        if self._existing is None:
            found = api.list_slices(self.node, self.driver)
            self._existing = {s["metadata"]["name"]: s for s in found}
            highest = max((int(s.get("spec", {}).get("pool", {}).get("generation") or 0) for s in found), default=0)
            self.generation = max(self.generation, highest)
        generation = self.generation + 1
        documents = slice_documents(self.node, self.driver, generation, devices)
        written: dict[str, dict[str, Any]] = {}
        for document in documents:
            name = document["metadata"]["name"]
            current = self._existing.get(name)
            if current is not None:
                document["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion", "")
                try:
                    written[name] = self._client().replace_slice(document)
                    continue
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    document["metadata"].pop("resourceVersion", None)
            written[name] = api.create_slice(document)
        self.generation = generation
        for name in [n for n in self._existing if n not in written]:
            api.delete_slice(name)
            log.info("deleted ResourceSlice %s: not needed any more", name)
        self._existing = written
        log.info(
            "ResourceSlices of node %s: %d devices in %d slices, generation %d",
            self.node, len(devices), len(documents), generation,
        )

    def delete_all(self) -> None:
        """Remove every slice of this node and driver (blocking): used by nothing at shutdown, since a restarting
        driver keeps its devices schedulable; available to an uninstall."""
        api = self._client()
        for found in api.list_slices(self.node, self.driver):
            api.delete_slice(found["metadata"]["name"])

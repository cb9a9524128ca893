"""Prepare and Unprepare as the node sees them: read the claim, write its CDI spec, keep the checkpoint.

One claim at a time per driver (a lock), so the checkpoint and the spec files always agree. Failures stay with
their claim: the answer for one claim never depends on another's. Both calls are idempotent: a claim already
prepared answers from the checkpoint, and an unknown claim unprepares successfully.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from deviceplugin.kubelet.cdi import CdiError, file_name, remove_spec, write_spec
from deviceplugin.kubelet.dra import checkpoint as ckpt
from deviceplugin.kubelet.dra.claims import (
    CDI_CLASS,
    ClaimError,
    PreparedDevice,
    allocation_results,
    plan_claim,
)
from deviceplugin.kubelet.dra.kubeapi import ApiError, KubeApi
from deviceplugin.records import PoolDevice, ResourcePool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class PrepareResult:
    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""
    reason: str = ""  # the failure's metrics label; "" on success


# Observes one claim's outcome: (call, seconds, reason or "").
Observer = Callable[[str, float, str], None]


class ClaimState:
    """The driver's prepared claims, their CDI specs and the checkpoint behind them."""

    def __init__(
        self,
        *,
        driver: str,
        node: str,
        cdi_dir: Path,
        checkpoint_path: Path,
        api: Callable[[], KubeApi],
        devices: Callable[[], Mapping[str, tuple[ResourcePool, PoolDevice]]],
        observer: Observer | None = None,
    ) -> None:
        self.driver = driver
        self.node = node
        self.cdi_dir = cdi_dir
        self.checkpoint_path = checkpoint_path
        self._api_factory = api
        self._api: KubeApi | None = None
        self._devices = devices
        self._observer = observer
        self._lock = asyncio.Lock()
        self.checkpoint = ckpt.load(checkpoint_path, driver, node)
        if self.checkpoint.claims:
            log.info("checkpoint %s: %d prepared claims", checkpoint_path, len(self.checkpoint.claims))

    def _client(self) -> KubeApi:
        if self._api is None:
            self._api = self._api_factory()
        return self._api

    # ------------------------------------------------------------------------------------------ prepare
    async def prepare(self, claims: list[ClaimRef]) -> dict[str, PrepareResult]:
        """Every claim's answer, keyed by UID."""
        answers: dict[str, PrepareResult] = {}
        for claim in claims:
            started = time.monotonic()
            result = await self._prepare_one(claim)
            answers[claim.uid] = result
            self._observe("prepare", time.monotonic() - started, result.reason)
        return answers

    async def _prepare_one(self, claim: ClaimRef) -> PrepareResult:
        where = f"ResourceClaim {claim.namespace}/{claim.name} ({claim.uid})"
        async with self._lock:
            record = self.checkpoint.claims.get(claim.uid)
            if (
                record is not None
                and record.state == ckpt.PREPARE_COMPLETED
                and (self.cdi_dir / record.cdi_spec).exists()
            ):
                return PrepareResult(record.devices)  # kubelet asks again (its restart, a retry): same answer
        try:
            document = await asyncio.to_thread(self._client().read_claim, claim.namespace, claim.name)
        except ApiError as exc:
            reason = "not-found" if exc.status == 404 else "api"
            log.warning("preparing %s failed: %s", where, exc)
            return PrepareResult(error=f"preparing {where}: {exc}", reason=reason)
        async with self._lock:
            try:
                results = allocation_results(document, claim.uid, self.driver, self.node)
                plan = plan_claim(claim.uid, results, self._devices(), self.driver, self.node)
            except ClaimError as exc:
                log.warning("preparing %s refused: %s", where, exc)
                return PrepareResult(error=f"preparing {where}: {exc}", reason=exc.reason)
            try:
                started = ckpt.ClaimRecord(claim.namespace, claim.name, ckpt.PREPARE_STARTED, plan.spec_file)
                await asyncio.to_thread(self._save, self.checkpoint.with_claim(claim.uid, started))
                await asyncio.to_thread(write_spec, self.cdi_dir, plan.spec_file, plan.spec)
                done = ckpt.ClaimRecord(
                    claim.namespace, claim.name, ckpt.PREPARE_COMPLETED, plan.spec_file, plan.devices
                )
                await asyncio.to_thread(self._save, self.checkpoint.with_claim(claim.uid, done))
            except (OSError, CdiError) as exc:
                log.error("preparing %s failed writing its CDI spec or checkpoint: %s", where, exc)
                return PrepareResult(error=f"preparing {where}: writing {plan.spec_file}: {exc}", reason="write")
        log.info(
            "prepared %s: %s", where, ", ".join(d.device_name for d in plan.devices),
            extra={"claim": claim.uid, "cdi_spec": plan.spec_file},
        )
        return PrepareResult(plan.devices)

    def _save(self, checkpoint: ckpt.Checkpoint) -> None:
        ckpt.save(self.checkpoint_path, checkpoint)
        self.checkpoint = checkpoint

    # ---------------------------------------------------------------------------------------- unprepare
    async def unprepare(self, claims: list[ClaimRef]) -> dict[str, str]:
        """Every claim's error ("" = done), keyed by UID. A claim never prepared here is done already."""
        answers: dict[str, str] = {}
        for claim in claims:
            started = time.monotonic()
            error = await self._unprepare_one(claim)
            answers[claim.uid] = error
            self._observe("unprepare", time.monotonic() - started, "write" if error else "")
        return answers

    async def _unprepare_one(self, claim: ClaimRef) -> str:
        where = f"ResourceClaim {claim.namespace}/{claim.name} ({claim.uid})"
        async with self._lock:
            record = self.checkpoint.claims.get(claim.uid)
            # The spec file name follows from the UID, so even a claim the checkpoint lost leaves nothing behind.
            names = {file_name(f"{self.driver}/{CDI_CLASS}", claim.uid)}
            if record is not None:
                names.add(record.cdi_spec)
            try:
                for name in sorted(names):
                    await asyncio.to_thread(remove_spec, self.cdi_dir, name)
                if record is not None:
                    await asyncio.to_thread(self._save, self.checkpoint.without(claim.uid))
            except OSError as exc:
                log.error("unpreparing %s failed: %s", where, exc)
                return f"unpreparing {where}: {exc}"
        if record is not None:
            log.info("unprepared %s", where, extra={"claim": claim.uid})
        return ""

    def _observe(self, call: str, seconds: float, reason: str) -> None:
        if self._observer is not None:
            self._observer(call, seconds, reason)

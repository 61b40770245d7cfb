"""The analysis task: one function, run by the embedded pool and by Celery workers alike.

It reads everything it needs from the stores (never arrays from the broker), runs the job's
program in the sandbox or its prompt through the agent runtime, writes output masks as NIfTI
artifacts on the input grids, and stores the AnalysisResult on the job record.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from api_schemas.jobs import JobStatus
from api_schemas.requests import VolumeInput
from api_schemas.results import AnalysisResult, AnalysisStatus, OutputVolume
from service.clock import now_iso
from service.observability import JOB_DURATION, STAGE_DURATION, job_id_var
from service.storage import ArtifactRecord, JobRecord, VolumeRecord
from service.storage.outage import is_outage, retry_through_outage, store_errors
from service.tasks import cancel, gate, lease
from service.tasks.context import TaskContext

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    pass


class JobInterrupted(Exception):
    """The job store or the broker went away mid-job: not the job's fault, so no failed result is
    written. The lease lapses and the reaper requeues the job (a new attempt) once the store is back."""


def load_inputs(ctx: TaskContext, tenant: str, volumes: list[VolumeInput], names: list[str]):
    """Read the job's volumes from the artifact store with the hostile-input checks of voxel_ops."""
    from voxel_ops import VolumeMeta, load_volume

    scans, checksums, paths = {}, {}, {}
    for ref, name in zip(volumes, names):
        record = ctx.records.get_record(VolumeRecord, ref.id, tenant)
        if record is None:
            raise ValueError(f"volume {ref.id} not found")
        meta = VolumeMeta(modality=ref.modality or record.modality, acquisition_date=ref.date or record.date,
                          source_name=record.filename)
        paths[name] = ctx.artifacts.path(tenant, record.artifact)
        scans[name] = load_volume(paths[name], meta=meta)
        checksums[name] = record.sha256
    return scans, checksums, paths


def store_outputs(ctx: TaskContext, tenant: str, job_id: str, result: AnalysisResult,
                  volume_ids: dict[str, str]) -> None:
    """Move each output file to its artifact name (the sandbox wrote it once, into the job's directory
    of the same store); ``path`` becomes the artifact id."""
    kept: list[OutputVolume] = []
    for i, out in enumerate(result.outputs):
        src = Path(out.path) if out.path else None
        if src is None or not src.is_file() or not src.name.endswith((".nii", ".nii.gz")):
            log.warning("output %s has no NIfTI file (%s); dropped", out.name, out.path)
            continue
        artifact = f"{job_id}_out{i}.nii.gz" if src.name.endswith(".gz") else f"{job_id}_out{i}.nii"
        _, digest = ctx.artifacts.adopt(tenant, artifact, src)  # written once, by the sandbox
        only = next(iter(volume_ids.values())) if len(volume_ids) == 1 else None
        record = ArtifactRecord(
            id=artifact, tenant=tenant, job_id=job_id, name=out.name, kind=out.kind, source=out.source,
            source_volume_id=volume_ids.get(out.source or "") or only, sha256=digest, created_at_ts=time.time())
        ctx.records.put_record(record)
        snapshot = _store_snapshot(ctx, tenant, record) if out.kind == "mask" else None
        kept.append(out.model_copy(update={"path": artifact, "snapshot": snapshot}))
        with contextlib.suppress(OSError):  # the job's directory, once it holds nothing more
            src.parent.rmdir()
    result.outputs = kept


def _store_snapshot(ctx: TaskContext, tenant: str, record: ArtifactRecord) -> str | None:
    """The mask's PNG snapshot, stored with the result; a failure costs the picture, never the job."""
    from service.png import store_snapshot

    try:
        return store_snapshot(ctx.records, ctx.artifacts, tenant, record)
    except Exception:  # noqa: BLE001 - the snapshot route renders it on demand later
        log.warning("snapshot of %s failed", record.id, exc_info=True)
        return None


def _progress(ctx: TaskContext, job_id: str, step: int, max_steps: int) -> None:
    """Record "working on step k of at most n" on the running job (clients poll it)."""
    try:
        ctx.records.update_record(JobRecord, job_id, {"progress": {"step": step, "max_steps": max_steps}},
                                  only_if_status=(JobStatus.running.value,))
    except store_errors() as exc:  # a progress line is not worth stopping the job for
        log.warning("progress not recorded (job store unavailable): %s", exc)


def run_analysis(ctx: TaskContext, job_id: str) -> str:
    """Execute one queued job to a terminal state; returns the final status."""
    token = job_id_var.set(job_id)
    try:
        return _run(ctx, job_id)
    finally:
        job_id_var.reset(token)


def _run(ctx: TaskContext, job_id: str) -> str:
    """Claim the job (a queued one, or one whose worker was lost), run it under a renewed lease."""
    t_start = time.perf_counter()
    policy = lease.LeasePolicy.from_settings(ctx.settings)
    owner = lease.Owner.current(ctx.node)
    claimed = lease.claim(ctx.records, job_id, owner, policy, ctx.clock)
    if claimed.job is None:
        current = ctx.records.get_record(JobRecord, job_id)
        log.info("job not started: %s", claimed.decision.reason)
        if claimed.decision.action == lease.Action.fail and current is not None and current.batch_id:
            from service.batches import on_job_finished

            on_job_finished(ctx, current.batch_id)
        return current.status.value if current else "missing"
    heartbeat = lease.Heartbeat(ctx.records, job_id, owner, policy, ctx.clock)
    with heartbeat, cancel.flag(job_id) as cancelled:  # renewed until the result is written, through an outage too
        try:
            # a lost lease (cancelled, or taken over) stops the sandbox at its next safe point
            return _execute(ctx, claimed.job, owner, t_start, cancel.any_of(cancelled, heartbeat.lost))
        except (JobInterrupted, *store_errors()) as exc:
            log.warning("job interrupted by a job store or broker outage (%s); its lease lapses and the reaper "
                        "requeues it", exc)
            return "interrupted"


def _execute(ctx: TaskContext, job: JobRecord, owner: lease.Owner, t_start: float,
             cancelled: Callable[[], bool] | None = None) -> str:
    job_id, tenant = job.id, job.tenant
    timings: dict[str, float] = {}
    kind = "code" if job.code else "prompt"
    scans: dict = {}
    client = None
    try:
        gate.wait_at_gate(ctx.settings.test_gate_dir, job_id, job.attempt, owner.id)
        volumes = [VolumeInput.model_validate(v) for v in job.volumes]
        names = job.scan_names
        t0 = time.perf_counter()
        scans, checksums, paths = load_inputs(ctx, tenant, volumes, names)
        timings["load_s"] = time.perf_counter() - t0

        from service.tasks import engines

        client = ctx.vision_client(job_id)
        if hasattr(client, "register_stored"):  # a remote client: inputs go by artifact reference
            for name, vol in scans.items():
                client.register_stored(vol, paths[name], checksums[name])
        out_dir = ctx.artifacts.job_dir(tenant, job_id)
        t0 = time.perf_counter()
        if job.code:
            result = engines.run_program(job.code, scans, client=client, output_dir=out_dir,
                                         models_dir=ctx.settings.models_dir, job_id=job_id,
                                         memory_bytes=ctx.settings.job_memory_bytes, cancelled=cancelled)
        else:
            result = engines.run_prompt(job.prompt or "", scans, client=client, output_dir=out_dir,
                                        models_dir=ctx.settings.models_dir, job_id=job_id,
                                        max_steps=ctx.settings.agent_max_steps,
                                        max_wall_s=ctx.settings.agent_max_wall_s,
                                        on_step=lambda k, n: _progress(ctx, job_id, k, n),
                                        memory_bytes=ctx.settings.job_memory_bytes, cancelled=cancelled)
        timings["analysis_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        store_outputs(ctx, tenant, job_id, result, {n: v.id for n, v in zip(names, volumes)})
        timings["outputs_s"] = time.perf_counter() - t0
        result.input_checksums = {**checksums, **result.input_checksums}
        final = JobStatus.failed if result.status == AnalysisStatus.failed else JobStatus.succeeded
        error = result.error
    except Exception as exc:  # noqa: BLE001 - every failure becomes a failed job, never a lost one
        if is_outage(exc):
            raise JobInterrupted(f"{type(exc).__name__}: {exc}") from exc
        log.warning("job failed: %s", exc, exc_info=not isinstance(exc, ValueError))
        result = AnalysisResult(status=AnalysisStatus.failed, error=f"{type(exc).__name__}: {exc}")
        final, error = JobStatus.failed, result.error
    finally:
        if client is not None and hasattr(client, "release"):
            try:
                client.release(job_id)
            except Exception:  # noqa: BLE001 - the job has its result; a failed release only leaks cache
                log.warning("could not release encodings of job", exc_info=True)
    timings["total_s"] = time.perf_counter() - t_start
    result.timings_s = {**result.timings_s, **{k: round(v, 6) for k, v in timings.items()}}
    for stage, seconds in timings.items():
        STAGE_DURATION.labels(stage.removesuffix("_s")).observe(seconds)
    JOB_DURATION.labels(final.value, kind).observe(timings["total_s"])
    changes = {"status": final, "finished_at": now_iso(), "result": result, "error": error}
    done = retry_through_outage(
        lambda: ctx.records.update_record(JobRecord, job_id, changes, only_if=lease.held_by(owner)),
        ctx.settings.store_retry_s, "storing the result")
    if done is None:  # cancelled, or taken over after this worker lost its lease: keep theirs
        current = ctx.records.get_record(JobRecord, job_id)
        if current is None or current.status == JobStatus.cancelled:
            log.info("job was cancelled while running; result discarded")
            return JobStatus.cancelled.value
        log.warning("job lease lost while running (now %s, attempt %d); result discarded", current.status.value,
                    current.attempt)
        return current.status.value
    if done.batch_id:
        from service.batches import on_job_finished

        batch_id = done.batch_id
        retry_through_outage(lambda: on_job_finished(ctx, batch_id), ctx.settings.store_retry_s,
                             "completing the batch")
    if done.routing is not None:  # started by a DICOM routing rule: push its SEG + SR back
        from service.dicom.routing import on_job_finished as on_routed_job_finished

        on_routed_job_finished(ctx, done)
    return final.value

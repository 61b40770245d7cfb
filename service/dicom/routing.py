"""PACS auto-routing: rules that run a prompt (or program) on the matching series of an arriving study
and push the results (SEG + SR) back to the tenant's DICOMweb destination.

The rules file (YAML, ``VOXAGENT_ROUTING_RULES``) is validated with pydantic when the service starts,
so a typo stops ``voxagent serve`` with the file, the rule and the field named, instead of a study
silently not being routed later::

    destinations:            # per tenant: where results go (STOW-RS), through the SSRF guard
      acme:
        url: https://pacs.example.org/dicom-web
        headers: {Authorization: "Bearer ..."}    # or username/password (basic auth)
        attempts: 5
    rules:                   # in order; the first rule whose scans all find a series wins
      - name: flair-lesions
        tenants: [acme]      # optional; default: every tenant
        prompt: "segment the lesions in flair and report their volume"   # or code: "..."
        scans:               # scan name in the prompt -> series selector (all given fields must match)
          flair: {modality: MR, sequence: FLAIR}
          t1: {description: "re:t1.*(mprage|tfe)"}
        dicom_out: flair     # the scan whose study receives SEG and SR (default: the first scan)

Selector fields: ``modality`` (the DICOM Modality, e.g. MR, CT), ``sequence`` (voxagent's mapping:
T1, T1C, T2, FLAIR, DWI, ADC, SWI, CT) and ``description`` (SeriesDescription). A value is a
case-insensitive glob (``*t1*``), or a regular expression after ``re:`` (searched, case-insensitive).
Each scan takes a different series, the first stored one of the study that matches.

A study that matches no rule is recorded (status ``unmatched``), not dropped. A routed job's
completion (:func:`on_job_finished`, called by the task wherever it ran) builds the SEG and SR and
pushes them; when every attempt fails, a :class:`~service.storage.models.DeliveryRecord` with status
``dead_letter`` keeps what was not delivered and why.
"""
from __future__ import annotations

import fnmatch
import logging
import re
import threading
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from api_schemas.limits import MAX_CODE_CHARS, MAX_PROMPT_CHARS, MAX_VOLUMES_PER_ANALYSIS
from api_schemas.requests import check_scan_name
from service.netguard import DestinationRefused, check_url

log = logging.getLogger(__name__)


class RoutingRulesError(ValueError):
    """The rules file is unusable; the message names the file, the place and the problem."""


def _pattern(value: str) -> re.Pattern[str]:
    if value.startswith("re:"):
        return re.compile(value[3:], re.IGNORECASE)
    return re.compile(fnmatch.translate(value), re.IGNORECASE)


class SeriesSelector(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modality: str | None = Field(default=None, max_length=200)
    sequence: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=200)

    @field_validator("modality", "sequence", "description")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                _pattern(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {v!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> "SeriesSelector":
        if self.modality is None and self.sequence is None and self.description is None:
            raise ValueError("a series selector needs at least one of modality, sequence, description")
        return self

    def matches(self, series: dict[str, Any]) -> bool:
        fields = {"modality": series.get("dicom_modality"), "sequence": series.get("modality"),
                  "description": series.get("series_description")}
        for key, value in fields.items():
            wanted = getattr(self, key)
            if wanted is None:
                continue
            pattern = _pattern(wanted)
            text = value or ""
            if not (pattern.search(text) if wanted.startswith("re:") else pattern.fullmatch(text)):
                return False
        return True


class DestinationConfig(BaseModel):
    """A DICOMweb server (its root: ``<url>/studies`` receives STOW-RS)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000)
    headers: dict[str, str] = Field(default_factory=dict)
    username: str | None = None
    password: str | None = None
    attempts: int = Field(default=5, ge=1, le=20)
    backoff_s: float = Field(default=1.0, ge=0.0, le=600.0)
    timeout_s: float = Field(default=30.0, gt=0.0, le=600.0)

    @field_validator("url")
    @classmethod
    def _guarded(cls, v: str, info: ValidationInfo) -> str:
        allow = bool((info.context or {}).get("allow_loopback", False))
        try:  # the shape and any literal address now; names are checked again at every push
            check_url(v, allow_loopback=allow, resolve=False)
        except DestinationRefused as exc:
            raise ValueError(f"destination {v!r} {exc}") from None
        return v

    @model_validator(mode="after")
    def _auth(self) -> "DestinationConfig":
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        return self


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    tenants: list[str] | None = None
    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    code: str | None = Field(default=None, min_length=1, max_length=MAX_CODE_CHARS)
    scans: dict[str, SeriesSelector] = Field(min_length=1, max_length=MAX_VOLUMES_PER_ANALYSIS)
    dicom_out: str | None = None
    push: bool = True

    @field_validator("scans")
    @classmethod
    def _names(cls, v: dict[str, SeriesSelector]) -> dict[str, SeriesSelector]:
        for name in v:
            check_scan_name(name)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Rule":
        if (self.prompt is None) == (self.code is None):
            raise ValueError("give exactly one of 'prompt' or 'code'")
        if self.dicom_out is not None and self.dicom_out not in self.scans:
            raise ValueError(f"dicom_out {self.dicom_out!r} is not one of the rule's scans ({', '.join(self.scans)})")
        return self

    @property
    def output_scan(self) -> str:
        return self.dicom_out or next(iter(self.scans))

    def applies_to(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants


class RoutingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> "RoutingConfig":
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique: {', '.join(dupes)}")
        return self

    def match(self, tenant: str, series: list[dict[str, Any]]) -> tuple[Rule, dict[str, dict[str, Any]]] | None:
        """The first rule whose every scan finds a (distinct, stored) series, with scan -> series."""
        stored = [s for s in series if s.get("volume_id")]
        for rule in self.rules:
            if not rule.applies_to(tenant):
                continue
            chosen: dict[str, dict[str, Any]] = {}
            for scan, selector in rule.scans.items():
                pick = next((s for s in stored if selector.matches(s) and s not in chosen.values()), None)
                if pick is None:
                    break
                chosen[scan] = pick
            else:
                return rule, chosen
        return None


def parse_rules(text: str, source: str = "routing rules", *, allow_loopback: bool = False) -> RoutingConfig:
    """Validate a rules document; :class:`RoutingRulesError` names the place of every problem."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RoutingRulesError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RoutingRulesError(f"{source}: the top level must be a mapping with 'rules' (and 'destinations')")
    try:
        return RoutingConfig.model_validate(data, context={"allow_loopback": allow_loopback})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _where(data, err.get("loc", ()))
            problems.append(f"{loc}: {err.get('msg', 'invalid')}")
        raise RoutingRulesError(f"{source}: " + "; ".join(problems[:20])) from None


def _where(data: Any, loc: tuple) -> str:
    """A readable location: rules[0] (name 'x').scans.t1 ..."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            name = node[item].get("name") if isinstance(node, list) and item < len(node) and isinstance(
                node[item], dict) else None
            parts[-1:] = [f"{parts[-1] if parts else ''}[{item}]" + (f" (name {name!r})" if name else "")]
        else:
            parts.append(str(item))
        try:
            node = node[item]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts) or "(top level)"


_cache: dict[tuple[str, float, bool], RoutingConfig] = {}
_cache_lock = threading.Lock()


def load_rules(path: Path | str, *, allow_loopback: bool = False) -> RoutingConfig:
    """The validated rules of ``path`` (re-read when the file changes)."""
    p = Path(path)
    try:
        key = (str(p.resolve()), p.stat().st_mtime, allow_loopback)
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutingRulesError(f"{p}: cannot read the routing rules ({exc.strerror or type(exc).__name__})") from None
    config = parse_rules(text, str(p), allow_loopback=allow_loopback)
    with _cache_lock:
        _cache.clear()
        _cache[key] = config
    log.info("routing rules loaded", extra={"rules": len(config.rules), "destinations": len(config.destinations)})
    return config


def config_of(settings) -> RoutingConfig | None:
    if not settings.routing_rules:
        return None
    return load_rules(settings.routing_rules, allow_loopback=settings.webhook_allow_loopback)


# --------------------------------------------------------------------------- arrival


def route_study(state, study_id: str) -> None:
    """Run the first matching rule on a study just stored by STOW-RS; record the outcome on the study."""
    from api_schemas.requests import AnalysisRequest, VolumeInput
    from service import jobs
    from service.deps import admit
    from service.errors import ProblemError
    from service.storage.models import RoutingRef, StudyRecord

    config = config_of(state.settings)
    study = state.records.get_record(StudyRecord, study_id)
    if config is None or study is None or study.status == "rejected":
        return
    found = config.match(study.tenant, study.series)
    if found is None:
        state.records.update_record(StudyRecord, study_id, {"status": "unmatched"})
        log.info("study matches no routing rule", extra={"study_record": study_id})
        return
    rule, chosen = found
    try:
        req = AnalysisRequest(prompt=rule.prompt, code=rule.code,
                              volumes=[VolumeInput(id=s["volume_id"], name=scan) for scan, s in chosen.items()])
        admit(state, study.tenant)
        job = jobs.new_job_record(state.records, study.tenant, req, label=f"routing:{rule.name}")
        job = job.model_copy(update={"routing": RoutingRef(rule=rule.name, study_record_id=study_id,
                                                           dicom_scan=rule.output_scan)})
        state.records.update_record(StudyRecord, study_id, {"status": "routed", "rule": rule.name,
                                                            "job_id": job.id})
        jobs.submit(state, job)
    except (ProblemError, ValidationError, ValueError) as exc:
        detail = exc.detail if isinstance(exc, ProblemError) else str(exc)
        state.records.update_record(StudyRecord, study_id, {"status": "routing_failed", "rule": rule.name,
                                                            "routing_error": str(detail)[:500]})
        log.warning("routing rule could not start its job", extra={"study_record": study_id, "rule": rule.name})
        return
    log.info("study routed", extra={"study_record": study_id, "rule": rule.name, "job_id": job.id})


# --------------------------------------------------------------------------- completion


def on_job_finished(ctx, job) -> None:
    """A routed job ended: build its SEG and SR and push them to the tenant's destination.

    Called by the analysis task after the job's final state is stored (embedded pool or Celery
    worker alike). Never raises: what happened is written to the study and delivery records.
    """
    try:
        _deliver(ctx, job)
    except Exception:  # noqa: BLE001 - a failed push must not turn a finished job into a failed task
        log.exception("routing delivery crashed", extra={"job_id": job.id})
        _record_delivery(ctx, job, "", "dead_letter", 0, "internal error while delivering", [])


def _deliver(ctx, job) -> None:
    from api_schemas.jobs import JobStatus
    from service.dicom.dicomweb import stow_rs
    from service.dicom.export import DicomExportError, job_dicom
    from service.storage.models import StudyRecord

    ref = job.routing
    config = config_of(ctx.settings)
    rule = next((r for r in config.rules if r.name == ref.rule), None) if config else None
    dest = config.destinations.get(job.tenant) if config else None
    if job.status != JobStatus.succeeded:
        ctx.records.update_record(StudyRecord, ref.study_record_id, {"delivery": {
            "status": "skipped", "reason": f"analysis {job.status.value}"}})
        return
    if rule is None or not rule.push or dest is None:
        ctx.records.update_record(StudyRecord, ref.study_record_id, {"delivery": {
            "status": "not_configured", "reason": "no push for this rule or no destination for this tenant"}})
        return
    try:
        built = job_dicom(ctx.records, ctx.artifacts, job, ref.dicom_scan)
    except DicomExportError as exc:
        _record_delivery(ctx, job, dest.url, "dead_letter", 0, exc.detail, [])
        return
    files = [p for p in (built.seg, built.sr) if p is not None]
    instances = [_sop_instance(p) for p in files]
    result = stow_rs(dest.url, [p.read_bytes() for p in files], headers=dest.headers,
                     auth=(dest.username, dest.password) if dest.username and dest.password is not None else None,
                     attempts=dest.attempts, backoff_s=dest.backoff_s, timeout_s=dest.timeout_s,
                     allow_loopback=ctx.settings.webhook_allow_loopback)
    _record_delivery(ctx, job, dest.url, "delivered" if result.delivered else "dead_letter", result.attempts,
                     result.last_error, instances)


def _sop_instance(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def _record_delivery(ctx, job, destination: str, status: str, attempts: int, error: str | None,
                     instances: list[str]) -> None:
    from service.clock import utcnow
    from service.storage.models import DeliveryRecord, StudyRecord

    created, ts = utcnow()
    record = DeliveryRecord(id=f"dlv_{uuid.uuid4().hex}", tenant=job.tenant, created_at=created, created_at_ts=ts,
                            job_id=job.id, study_record_id=job.routing.study_record_id, destination=destination,
                            status=status, attempts=attempts, last_error=error, instances=instances)
    ctx.records.put_record(record)
    ctx.records.update_record(StudyRecord, job.routing.study_record_id, {"delivery": {
        "status": status, "delivery_id": record.id, "attempts": attempts, "last_error": error}})
    (log.info if status == "delivered" else log.warning)(
        "routing results %s", status, extra={"job_id": job.id, "attempts": attempts, "delivery_id": record.id})

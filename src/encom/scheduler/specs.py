"""What the scheduler sends to hosts (job specs) and to the controller (job records)."""

from __future__ import annotations

from encom.api.jobspec import controller_job, dyno_name, parse_dyno, process_spec
from encom.api.types import ExpandedFormation, HostJobSpec

__all__ = ["controller_job", "dyno_name", "job_spec", "parse_dyno"]


def job_spec(formation: ExpandedFormation, process_type: str, index: int, job_id: str | None = None) -> HostJobSpec:
    """The host job for dyno `<process_type>.<index>` of a formation."""
    return process_spec(formation.app, formation.release, formation.artifact, process_type, index, job_id)

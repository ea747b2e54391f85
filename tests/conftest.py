"""The whole suite's precondition: a green run must mean real containers and a real HAProxy were tested."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REQUIRED_COMMANDS = ("runc", "haproxy", "git", "ssh", "curl")
DEBIAN_PYTHON = Path("/usr/bin/python3")  # what build containers run


def missing_requirements() -> list[str]:
    missing = [f"the `{name}` command" for name in REQUIRED_COMMANDS if shutil.which(name) is None]
    if os.geteuid() != 0:
        missing.append("root (containers, cgroups and network namespaces need it)")
    if not DEBIAN_PYTHON.exists():
        missing.append(str(DEBIAN_PYTHON))
    return missing


def pytest_configure(config: pytest.Config) -> None:
    """Fail (not skip) when the machine cannot run the real thing; `make test` installs what is missing."""
    missing = missing_requirements()
    if missing:
        raise pytest.UsageError(f"these tests need {', '.join(missing)}; run them through `make test`")

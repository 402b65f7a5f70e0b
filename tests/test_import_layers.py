"""The packages import one way only (models < export < fleet < coordinator < pockettune), and
coordinator/services has no import cycle: ``scripts/check_imports.py``, run as anyone would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_imports.py"


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO)


def test_the_repository_imports_downward_only():
    result = _check()
    assert result.returncode == 0, result.stdout + result.stderr


def test_upward_imports_and_service_cycles_are_found_lazy_or_not(tmp_path):
    files = {
        "models/__init__.py": "",
        "models/low.py": "def f():\n    from export import high  # a lazy upward import still counts\n",
        "export/__init__.py": "",
        "export/high.py": "from models import low\n",
        "coordinator/__init__.py": "",
        "coordinator/services/__init__.py": "",
        "coordinator/services/rounds.py": "from coordinator.services.tiers import x\n",
        "coordinator/services/tiers.py": "def g():\n    from . import artifacts\n",
        "coordinator/services/artifacts.py": "import importlib\nimportlib.import_module('coordinator.services.rounds')\n",
        "coordinator/services/alone.py": "from coordinator.services import rounds\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    result = _check("--root", str(tmp_path))
    assert result.returncode == 1
    assert "layer: models/low.py:2: models.low imports export.high" in result.stdout
    cycles = [line for line in result.stdout.splitlines() if line.startswith("cycle:")]
    assert len(cycles) == 1 and "coordinator.services.artifacts -> coordinator.services.rounds" in cycles[0]
    assert "alone" not in cycles[0]

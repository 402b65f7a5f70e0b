"""Where a round is decided is one file: ``coordinator/services/lifecycle.py``.

Read from the source (``ast``, nothing imported): no other service module sets a job's or a
round's status, counts a round's updates or creates a round. (That coordinator/services has
no import cycle is checked by ``scripts/check_imports.py``, ``tests/test_import_layers.py``.)
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "coordinator" / "services"


def test_only_the_lifecycle_writes_job_and_round_status():
    """Where a round is decided is one file: no other service sets a job's or a round's status,
    counts a round's updates or creates a round (a task's status is the upload's business)."""
    writers = set()
    for path in SERVICES.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                attributes = [t.attr for target in targets
                              for t in (target.elts if isinstance(target, ast.Tuple) else [target])
                              if isinstance(t, ast.Attribute)]
                if "num_updates" in attributes or ("status" in attributes
                                                   and "TaskStatus" not in ast.unparse(node.value)):
                    writers.add(path.name)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Round":
                writers.add(path.name)
    assert writers == {"lifecycle.py"}, writers

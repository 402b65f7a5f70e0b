"""The coordinator's domain logic, kept out of the HTTP layer (api/) so it can be tested alone.

Where a round is decided:

- ``lifecycle.py`` every job and round status change: start, open, freeze, close, advance, pause, resume, cancel, fail
- ``aggregation.py`` ``RoundAggregator``: a frozen round's updates -> the new global adapter
- ``watcher.py`` the background thread that freezes overdue rounds and aggregates frozen ones

A device's requests:

- ``assignment.py`` which task a device gets (``tasks/next``) and what the offer says
- ``tiers.py`` per-device tiers: the configurator's choice, its artifact, the cut start adapter
- ``uploads.py`` accepting a result durably and exactly once
- ``validation.py`` what an upload must satisfy (``validate_update``, ``parse_meta``)
- ``rejections.py`` refused uploads logged for the dashboard
- ``norm_clipping.py`` the bound on an update's change, and scaling a longer one down
- ``adapter_mapping.py`` cutting (``project``) and lifting (``lift``) adapters between tiers

Jobs, artifacts and adapters:

- ``jobs.py`` the job specification an admin posts, and its validation
- ``label_positions.py`` whether a task's examples fit a tier's label-position head
- ``artifacts.py`` an artifact's content key, its export cache, and ``ArtifactInfo``
- ``artifact_worker.py`` the background thread that exports artifacts and prepares jobs
- ``adapters.py`` global adapters as blobs: PEFT files, the device ``.ptd``, the zip
- ``evaluation.py`` the background thread that scores each global adapter on held-out data
- ``proxy_generation.py`` prompts answered by a large model steered by a job's adapter
- ``heavy_imports.py`` loading torch and ExecuTorch once, off the request path

Shared:

- ``state.py`` ``ServiceState``: what services may use of the running coordinator
- ``payloads.py`` the JSON bodies the API returns
"""

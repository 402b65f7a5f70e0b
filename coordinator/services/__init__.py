"""The coordinator's domain logic, kept out of the HTTP layer (api/) so it can be tested alone.

- ``validation.py`` what an upload must satisfy (``validate_update``, ``parse_meta``)
- ``artifacts.py`` building and importing (model, tier) artifacts, cached by content key
- ``adapters.py`` global adapters as blobs: PEFT files, the device ``.ptd``, the zip
- ``jobs.py`` the job specification an admin posts, and its validation
- ``assignment.py`` which task a device gets (``tasks/next``)
- ``uploads.py`` accepting a result durably and exactly once
- ``rounds.py`` ``RoundCloser``: freezing, aggregating and opening rounds
- ``watcher.py`` the background thread that closes rounds at their deadline
- ``payloads.py`` the JSON bodies the API returns
"""

"""The web dashboard: server-rendered pages for operators (fleet, jobs, rounds) and admin forms.

- ``queries.py``  what each page shows, in a few aggregate queries
- ``charts.py``   chart specs (JSON) drawn by ``static/charts.js`` (written here, no CDN)
- ``login.py``    admin login with the admin token, session cookie, CSRF tokens
- ``forms.py``    the new-job form, turned into the same job spec the JSON API takes
- ``views.py``    the routes
- ``proxy_form.py`` the "try prompts" page (proxy-tuned generation with a job's adapter)

Pages of a running job refresh themselves: ``static/live.js`` fetches the same URL every few
seconds and swaps the parts marked ``data-live``, so there is one rendering path, not two.
"""

from __future__ import annotations

from flask import Flask


def register_dashboard(app: Flask) -> None:
    from coordinator.dashboard import proxy_form  # noqa: F401  (adds its route to bp)
    from coordinator.dashboard.views import bp

    app.register_blueprint(bp)

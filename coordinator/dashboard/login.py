"""The dashboard's admin login: the admin token, once, for a signed session cookie.

Operators log in with the same admin token the JSON API takes (``POCKETTUNE_ADMIN_TOKEN`` or
``<instance>/admin_token``); the browser then holds only a signed, HttpOnly, SameSite=Lax
session cookie saying "admin", never the token. Every form that changes something carries a
per-session CSRF token, checked in constant time, so another site cannot post on an
operator's behalf. Logging out clears the session.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from urllib.parse import urlsplit

from flask import abort, current_app, flash, redirect, request, session, url_for

from coordinator.auth import secret_matches

_ADMIN = "pockettune_admin"
_CSRF = "pockettune_csrf"


def is_admin() -> bool:
    return bool(session.get(_ADMIN))


def csrf_token() -> str:
    """This session's CSRF token (created on first use), for hidden form fields."""
    token = session.get(_CSRF)
    if token is None:
        token = session[_CSRF] = secrets.token_urlsafe(24)
    return token


def check_csrf() -> None:
    sent, expected = request.form.get("csrf_token", ""), session.get(_CSRF, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, "the form's security token is missing or stale; reload the page and try again")


def log_in(token: str) -> bool:
    """Start an admin session if ``token`` is the admin token."""
    if not secret_matches(token.strip(), current_app.extensions["pockettune"].admin_token_digest):
        return False
    session.clear()
    session[_ADMIN] = True
    session.permanent = False
    csrf_token()
    return True


def log_out() -> None:
    session.clear()


def safe_next(target: str | None) -> str:
    """Where to go after logging in: only a path on this site (no open redirect)."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") and not target.startswith("//"):
            return target
    return url_for("dashboard.overview")


def admin_required(view):
    """Admin actions: without a login, go to the login page (and come back after)."""
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if not is_admin():
            flash("Log in as admin to do that.", "error")
            return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?") if request.method == "GET"
                                    else request.referrer and urlsplit(request.referrer).path))
        if request.method == "POST":
            check_csrf()
        return view(*args, **kwargs)
    return wrapped


def viewer_required(view):
    """Read-only pages: open to all unless ``DASHBOARD_PUBLIC`` is off."""
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if not current_app.extensions["pockettune"].settings.DASHBOARD_PUBLIC and not is_admin():
            return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)
    return wrapped

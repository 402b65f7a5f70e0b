"""``pockettune coordinator``: serve the coordinator's API and dashboard through waitress (a production WSGI server).

The Flask development server is used only with ``--debug`` (interactive tracebacks, never
for devices in the field). Every option falls back to a ``POCKETTUNE_*`` environment
variable, then to a default; ``--port 0`` picks a free port. The first line on standard
error once the socket is bound says where it listens:
``pockettune coordinator: listening on http://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from coordinator.config import ADMIN_TOKEN_FILE, ENROLLMENT_KEY_FILE, Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_THREADS = 8


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "coordinator", help="serve the federated-learning coordinator (devices, jobs, rounds, aggregation)",
        description="Serve the PocketTune coordinator's JSON API under /api/v1 with waitress: device "
                    "registration and heartbeats, jobs, task assignment, result uploads, aggregation; "
                    "and its web dashboard at / (fleet, jobs, rounds; admin login for job actions). "
                    "The database schema is upgraded (Alembic) on start.",
        epilog="Secrets: without --admin-token / POCKETTUNE_ADMIN_TOKEN, a random admin token is created "
               f"once in INSTANCE/{ADMIN_TOKEN_FILE}; likewise the enrollment key in "
               f"INSTANCE/{ENROLLMENT_KEY_FILE}. Prefer the environment or those files over the command "
               "line, where other local users can read them.")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one and prints it)")
    p.add_argument("--db", metavar="URL", default=None,
                   help="SQLAlchemy database URL, e.g. postgresql+psycopg://user@host/db "
                        "(default: $POCKETTUNE_DB, else sqlite:///INSTANCE/coordinator.sqlite3)")
    p.add_argument("--instance", metavar="DIR", default=None,
                   help="instance folder for the SQLite file, blobs, artifact cache and generated secrets "
                        "(default: $POCKETTUNE_INSTANCE, else ./instance beside the coordinator package)")
    p.add_argument("--blob-dir", metavar="DIR", default=None,
                   help="content-addressed blob store (default INSTANCE/blobs)")
    p.add_argument("--artifact-cache", metavar="DIR", default=None,
                   help="exported artifacts by (model, tier) key, shareable between coordinators "
                        "(default: $POCKETTUNE_ARTIFACT_CACHE, else INSTANCE/artifacts)")
    p.add_argument("--admin-token", metavar="TOKEN", default=None,
                   help=f"bearer token for admin endpoints (default: $POCKETTUNE_ADMIN_TOKEN, else "
                        f"INSTANCE/{ADMIN_TOKEN_FILE}, created if missing)")
    p.add_argument("--enrollment-key", metavar="KEY", default=None,
                   help=f"key devices present to register (default: $POCKETTUNE_ENROLLMENT_KEY, else "
                        f"INSTANCE/{ENROLLMENT_KEY_FILE}, created if missing)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"request-handling threads (default {DEFAULT_THREADS})")
    p.add_argument("--evaluation-threads", type=int, default=Settings.EVALUATION_THREADS,
                   help="torch threads for scoring global adapters on the held-out split (default "
                        f"{Settings.EVALUATION_THREADS}: leaves the other cores to devices on the same host)")
    p.add_argument("--max-upload-mb", type=float, default=Settings.MAX_CONTENT_LENGTH / 2**20,
                   help="largest request body in MiB; bigger uploads get 413 "
                        f"(default {Settings.MAX_CONTENT_LENGTH / 2**20:g})")
    p.add_argument("--max-update-norm", type=float, default=Settings.MAX_UPDATE_NORM,
                   help="default bound on the L2 norm of an update's change from the round's start adapter, "
                        f"for jobs that set none (default {Settings.MAX_UPDATE_NORM:g})")
    p.add_argument("--offline-after", type=float, default=Settings.OFFLINE_AFTER_S, metavar="SECONDS",
                   help=f"a device unheard of for this long is offline (default {Settings.OFFLINE_AFTER_S:g})")
    p.add_argument("--heartbeat-interval", type=float, default=Settings.HEARTBEAT_INTERVAL_S, metavar="SECONDS",
                   help=f"heartbeat period devices are told to use (default {Settings.HEARTBEAT_INTERVAL_S:g})")
    p.add_argument("--tick", type=float, default=Settings.TICK_S, metavar="SECONDS",
                   help=f"how often round deadlines are checked (default {Settings.TICK_S:g})")
    p.add_argument("--dashboard-poll", type=float, default=Settings.DASHBOARD_POLL_S, metavar="SECONDS",
                   help="how often dashboard pages of a running job refresh themselves "
                        f"(default {Settings.DASHBOARD_POLL_S:g})")
    p.add_argument("--private-dashboard", action="store_true",
                   help="dashboard pages need the admin login too (default: readable by anyone who can "
                        "reach the coordinator; admin actions always need the login)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="log level of the coordinator's own messages (default INFO)")
    p.add_argument("--debug", action="store_true",
                   help="serve with Flask's development server and debugger instead of waitress "
                        "(local development only: never expose it)")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> dict:
    from models.console import UsageError

    for name in ("threads", "evaluation_threads"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("max_upload_mb", "max_update_norm", "offline_after", "heartbeat_interval", "tick",
                 "dashboard_poll"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in [0, 65535], got {args.port}")
    if args.debug and args.port == 0:
        raise UsageError("--debug needs a fixed --port (Flask's development server cannot report a free one)")
    return {
        "DATABASE": args.db, "INSTANCE_PATH": args.instance, "BLOB_DIR": args.blob_dir,
        "ARTIFACT_CACHE": args.artifact_cache, "ADMIN_TOKEN": args.admin_token,
        "ENROLLMENT_KEY": args.enrollment_key, "MAX_CONTENT_LENGTH": int(args.max_upload_mb * 2**20),
        "MAX_UPDATE_NORM": args.max_update_norm, "OFFLINE_AFTER_S": args.offline_after,
        "HEARTBEAT_INTERVAL_S": args.heartbeat_interval, "TICK_S": args.tick,
        "DB_POOL_SIZE": args.threads + 4, "DASHBOARD_POLL_S": args.dashboard_poll,
        "DASHBOARD_PUBLIC": not args.private_dashboard, "EVALUATION_THREADS": args.evaluation_threads,
    }


def run(args: argparse.Namespace) -> int:
    from models.console import UsageError

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("coordinator").setLevel(args.log_level)
    config = _config(args)

    from sqlalchemy.exc import ArgumentError, OperationalError

    from coordinator.app import create_app

    try:
        app = create_app(config)
    except ArgumentError as exc:
        raise UsageError(f"bad database URL {args.db or '$POCKETTUNE_DB'!r}: {exc}") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OperationalError as exc:
        raise UsageError(f"cannot open the database: {str(exc.orig).strip().splitlines()[0]}") from None
    if args.debug:
        print(f"pockettune coordinator: listening on http://{args.host}:{args.port} (Flask development server)",
              file=sys.stderr, flush=True)
        app.run(host=args.host, port=args.port, debug=True, use_reloader=False, threaded=True)
        return 0

    from waitress import create_server

    # waitress buffers a whole body before the app sees it, so it gets its own cap: bodies up to
    # twice the app's limit reach Flask (which answers a JSON 413); beyond that waitress answers
    # a plain-text 413 and closes the connection instead of buffering an arbitrarily large upload
    # (from the Content-Length alone, before reading the body). waitress refuses a body of
    # max_request_body_size bytes or more, hence the + 1: exactly twice the limit still reaches Flask.
    body_cap = 2 * config["MAX_CONTENT_LENGTH"] + 1
    try:
        server = create_server(app, host=args.host, port=args.port, threads=args.threads, ident="pockettune",
                               max_request_body_size=body_cap,
                               clear_untrusted_proxy_headers=True)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    print(f"pockettune coordinator: listening on http://{args.host}:{server.effective_port}",
          file=sys.stderr, flush=True)
    try:
        server.run()
    finally:
        app.extensions["pockettune"].stop_background()
    return 0

"""``phasewatch dashboards``: put the phasewatch dashboard into Grafana, or write its JSON.

    phasewatch dashboards push --url http://127.0.0.1:3000 --token glsa_...
    phasewatch dashboards push --url http://127.0.0.1:3000 --user admin --password admin
    phasewatch dashboards export -o phasewatch.json

The token may also come from ``$GRAFANA_TOKEN``, the password from ``$GRAFANA_PASSWORD`` (keeps
them out of shell history and ``ps``).
Cheap to import: Grafana and Prometheus libraries are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dashboards",
        help="push the phasewatch Grafana dashboard, or export its JSON",
        description="Create or update the phasewatch dashboard in Grafana (by uid), or write its JSON model.",
    )
    sub = parser.add_subparsers(dest="dashboards_command", metavar="ACTION")

    push = sub.add_parser(
        "push",
        help="create or update the dashboard in a Grafana instance",
        description="Create the phasewatch dashboard in Grafana, or update it in place when a dashboard "
        "with the same uid exists. Authenticate with a service-account token (--token or $GRAFANA_TOKEN) "
        "or with --user and --password (or $GRAFANA_PASSWORD).",
    )
    push.add_argument("--url", required=True, help="Grafana base URL, e.g. http://127.0.0.1:3000")
    push.add_argument("--token", default=None, help="service-account token (default: $GRAFANA_TOKEN)")
    push.add_argument("--user", default=None, help="user for basic authentication")
    push.add_argument(
        "--password",
        default=None,
        help="password for basic authentication (default: $GRAFANA_PASSWORD; on the command line it shows in `ps`)",
    )
    push.add_argument("--folder-uid", default=None, help="folder to save the dashboard in (default: keep / root)")
    push.add_argument(
        "--datasource-uid",
        default=None,
        help="uid of your Prometheus datasource, the default of the dashboard's $datasource variable",
    )
    push.add_argument("--uid", default=None, help="dashboard uid (default: phasewatch)")
    push.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default: 10)")
    push.set_defaults(func=_push)

    export = sub.add_parser("export", help="write the dashboard JSON model", description="Write the dashboard JSON.")
    export.add_argument(
        "-o", "--output", "--out", dest="output", metavar="FILE", default="-", help="file to write (default: standard output)"
    )
    export.add_argument("--uid", default=None, help="dashboard uid (default: phasewatch)")
    export.add_argument("--datasource-uid", default=None, help="default uid of the $datasource variable")
    export.set_defaults(func=_export)


def _model_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {}
    if args.uid:
        kwargs["uid"] = args.uid
    if args.datasource_uid:
        kwargs["datasource_uid"] = args.datasource_uid
    return kwargs


def _push(args: argparse.Namespace) -> int:
    from phasewatch.dashboard import build_dashboard
    from phasewatch.grafana import GrafanaError, push_dashboard

    token = args.token
    password = args.password
    if password is None and args.user:
        password = os.environ.get("GRAFANA_PASSWORD") or None
    if token is None and not (args.user or password):
        token = os.environ.get("GRAFANA_TOKEN") or None
    try:
        result = push_dashboard(
            args.url,
            token=token,
            user=args.user,
            password=password,
            dashboard=build_dashboard(**_model_kwargs(args)),
            folder_uid=args.folder_uid,
            timeout=args.timeout,
        )
    except GrafanaError as exc:
        print(f"phasewatch dashboards push: error: {exc}", file=sys.stderr)
        return 1
    print(f"{result.status} dashboard {result.uid!r} (version {result.version}): {result.url}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from phasewatch.dashboard import dashboard_json

    text = dashboard_json(**_model_kwargs(args))
    if args.output == "-":
        sys.stdout.write(text)
    else:
        try:
            with open(args.output, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise ValueError(f"--output {args.output}: cannot write ({exc.strerror or exc})") from None
        print(f"wrote {args.output}", file=sys.stderr)
    return 0

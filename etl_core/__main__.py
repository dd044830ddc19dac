"""The job's command line, for an operator beside the database: ``python -m etl_core migrate``
applies the schema steps a deploy needs, ahead of it (``--status`` only says which are pending);
``python -m etl_core check`` checks the settings, the database and the data location without running;
``python -m etl_core settings`` and ``tables`` print the references docs/configuration.md and
docs/tables.md are.
Settings come from the environment, as the function's do.  Prints one JSON document; exits 1 (with
the error as JSON on stderr, or the failed checks) when it fails."""

from __future__ import annotations

import argparse
import json
import os
import sys

from etl_core.config import Settings
from etl_core.errors import EtlError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etl_core", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    migrate = commands.add_parser("migrate", help="bring the database schema to this release's version")
    migrate.add_argument("--status", action="store_true", help="only show the version and the pending steps")
    check = commands.add_parser("check", help="check the settings, the database and the data location; run nothing")
    check.add_argument("--text", action="store_true", help="one line per check instead of JSON")
    commands.add_parser("settings", help="print the settings' reference (docs/configuration.md)")
    commands.add_parser("tables", help="print the tables' reference (docs/tables.md)")
    args = parser.parse_args(argv)
    if args.command in ("settings", "tables"):
        from etl_core import settings_reference, tables

        sys.stdout.write(settings_reference.markdown() if args.command == "settings" else tables.markdown())
        return 0
    try:
        settings = Settings.from_env(os.environ)
        from etl_core.service import Service

        service = Service(settings)
        try:
            result = service.check() if args.command == "check" else service.migrate(apply=not args.status)
        finally:
            service.close()
    except EtlError as exc:
        if getattr(args, "text", False):
            print(f"settings: NOT OK: {exc.message}", file=sys.stderr)
        else:
            print(json.dumps({"error": exc.to_dict()}, default=str), file=sys.stderr)
        return 1
    if getattr(args, "text", False):
        for check in result["checks"]:
            print(f"{check['check']}: {'ok' if check['ok'] else 'NOT OK'}: {check['detail']}")
    else:
        print(json.dumps(result))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())

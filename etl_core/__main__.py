"""The job's command line, for an operator beside the database: ``python -m etl_core migrate``
applies the schema steps a deploy needs, ahead of it; ``--status`` only says which are pending.
Settings come from the environment, as the function's do.  Prints one JSON document; exits 1 (with
the error as JSON on stderr) when it fails."""

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
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        from etl_core.service import Service

        service = Service(settings)
        try:
            result = service.migrate(apply=not args.status)
        finally:
            service.close()
    except EtlError as exc:
        print(json.dumps({"error": exc.to_dict()}, default=str), file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

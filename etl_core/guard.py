"""The load guard: a valid export cut short must not replace the features of every user.

Pure decisions on counts; the pipeline asks the database for the table's counts and calls these
before anything is published.  A trigger's ``force`` flag skips them.
"""

from __future__ import annotations

import dataclasses

from etl_core.errors import LoadRefused


@dataclasses.dataclass(frozen=True)
class Volume:
    """How much a features table holds: users, and experiments (the sum of ``total_experiments``)."""

    users: int
    experiments: int


def check_volume(current: Volume, incoming: Volume, *, min_share: float) -> None:
    """Refuse a load that holds less than ``min_share`` of the current users or experiments.  An empty
    table (the first run ever) never refuses."""
    short = [name for name in ("users", "experiments")
             if getattr(current, name) and getattr(incoming, name) < min_share * getattr(current, name)]
    if short:
        raise LoadRefused(
            f"the new load holds {_share(incoming, current, short[0])} of the table's {short[0]} "
            f"(at least {min_share:.0%} required): the export looks cut short; nothing was published. "
            "Trigger again with force=true to load it anyway",
            reason="shrink", min_share=min_share,
            current=dataclasses.asdict(current), incoming=dataclasses.asdict(incoming),
        )


def check_rejects(*, rows_read: int, rows_rejected: int, max_share: float | None) -> None:
    """Refuse a quarantine run that rejected more than ``max_share`` of the rows it read."""
    if max_share is None or not rows_read:
        return
    share = rows_rejected / rows_read
    if share > max_share:
        raise LoadRefused(
            f"{rows_rejected} of {rows_read} rows ({share:.1%}) were rejected, more than the "
            f"{max_share:.1%} allowed; nothing was published. Trigger again with force=true to load it anyway",
            reason="rejects", max_rejected_share=max_share, rows_read=rows_read, rows_rejected=rows_rejected,
        )


def _share(incoming: Volume, current: Volume, name: str) -> str:
    return f"{getattr(incoming, name) / getattr(current, name):.1%} ({getattr(incoming, name)} of " \
           f"{getattr(current, name)})"

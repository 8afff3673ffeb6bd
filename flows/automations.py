"""Create (or replace) the three semclip automations on a Prefect server.

The files in ``deployments/automations/`` work as they are with
``prefect automation create --from-file …`` once their placeholder block id is replaced by a
notification block's. This does that for all three: ``--block TYPE/NAME`` names the block
(``prefect block ls``; e.g. ``slack-webhook/fab-alerts``), ``--deadline HH:MM`` moves the
"not completed by" hour (fab time; the nightly cron comes from ``deployments/prefect.yaml``).
An automation of the same name is replaced, so running it twice leaves one of each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore

__all__ = ["AUTOMATIONS_DIR", "PLACEHOLDER_BLOCK", "install_automations", "load_automations"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
AUTOMATIONS_DIR = REPO / "deployments" / "automations"
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
PLACEHOLDER_BLOCK = UUID(int=0)
LATE = "semclip-nightly-late"


def nightly_cron_time(prefect_yaml: Path = PREFECT_YAML) -> dt.time:
    """The time of day of the ``nightly`` deployment's cron (``M H * * *``), fab time."""
    spec = yaml.safe_load(prefect_yaml.read_text())
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly")
    minute, hour = nightly["schedules"][0]["cron"].split()[:2]
    return dt.time(int(hour), int(minute))


def late_within(deadline: dt.time, scheduled: dt.time) -> dt.timedelta:
    """Seconds from the nightly's scheduled time to the deadline (the next day if earlier)."""
    day = dt.date(2000, 1, 1)
    delta = dt.datetime.combine(day, deadline) - dt.datetime.combine(day, scheduled)
    return delta if delta > dt.timedelta(0) else delta + dt.timedelta(days=1)


def load_automations(
    block_id: UUID | None = None,
    deadline: dt.time | None = None,
    folder: Path = AUTOMATIONS_DIR,
) -> list[AutomationCore]:
    """The shipped automations, validated, with ``block_id`` and ``deadline`` applied."""
    out = []
    for path in sorted(folder.glob("*.yaml")):
        data: dict[str, Any] = yaml.safe_load(path.read_text())
        if block_id is not None:
            for action in data.get("actions", []):
                if (
                    UUID(str(action.get("block_document_id", PLACEHOLDER_BLOCK)))
                    == PLACEHOLDER_BLOCK
                ):
                    action["block_document_id"] = str(block_id)
        if deadline is not None and data["name"] == LATE:
            data["trigger"]["within"] = late_within(deadline, nightly_cron_time()).total_seconds()
        out.append(AutomationCore.model_validate(data))
    return out


def install_automations(block: str, deadline: dt.time | None = None) -> list[UUID]:
    """Create the automations with notification block ``TYPE/NAME``, replacing same-named ones."""
    document_id = Block.load(block)._block_document_id
    if document_id is None:
        raise ValueError(f"block {block!r} has no saved document: save it first")
    created = []
    with get_client(sync_client=True) as client:
        for automation in load_automations(document_id, deadline):
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            created.append(client.create_automation(automation))
            log.info("created automation %r", automation.name)
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.automations", description=__doc__)
    parser.add_argument("--block", required=True, help="notification block TYPE/NAME")
    parser.add_argument(
        "--deadline", default=None, help="nightly 'completed by' hour, HH:MM fab time (07:00)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    deadline = dt.time.fromisoformat(args.deadline) if args.deadline else None
    ids = install_automations(args.block, deadline)
    print(f"{len(ids)} automations created: {', '.join(map(str, ids))}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

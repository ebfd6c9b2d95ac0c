"""``captioner data``: the data set tools, one sub-command each.

- ``data synth``: draw a synthetic captioning set (``synth``);
- ``data label``: caption a folder of unlabeled images with a teacher model (``label``).
"""

from __future__ import annotations

from typing import Any

from captioner.tools.label import add_label_command
from captioner.tools.synth import add_synth_command


def add_data_commands(commands: Any) -> None:
    """Register ``data`` and its actions on the top-level subparsers ``commands``."""
    data = commands.add_parser("data", help="data set tools: a synthetic set, a teacher's labels")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    add_synth_command(actions)
    add_label_command(actions)

"""The lab's agent: test-only files written into the lab's copy of a root image.

The agent (pipeline/lab/data/lab-agent) is started by its systemd unit once
the multi-user target is reached; it reads "ID COMMAND" lines on the second
serial port and answers on it (see guest.Guest.run).  lab-io is an I/O
workload the multipath tests run while they cut links.  None of this ever
goes into a product image: only into the sparse copy the lab exports.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline import runner
from pipeline.fsutil import data_file

# (file in pipeline/lab/data/, where it goes in the image)
AGENT = ("lab-agent", "/usr/local/sbin/lab-agent")
LAB_IO = ("lab-io", "/usr/local/sbin/lab-io")
AGENT_UNIT = ("lab-agent.service", "/etc/systemd/system/lab-agent.service")


def add_agent(image: Path, scratch: Path) -> None:
    """Write the agent, lab-io and the agent's enabled unit into a (lab-only) image copy.

    debugfs writes into the ext4 image directly: no mount, so no loop device
    and nothing to leave mounted.  It reads copies in ``scratch`` (the lab's
    work folder), so what went into the image stays beside the logs.
    """
    for name, _where in (AGENT, LAB_IO, AGENT_UNIT):
        shutil.copyfile(data_file("pipeline.lab", name), scratch / name)
    commands = scratch / "debugfs.cmds"
    commands.write_text("\n".join([
        "mkdir /usr/local/sbin",
        f"write {scratch / AGENT[0]} {AGENT[1]}",
        f"set_inode_field {AGENT[1]} mode 0100755",
        f"write {scratch / LAB_IO[0]} {LAB_IO[1]}",
        f"set_inode_field {LAB_IO[1]} mode 0100755",
        f"write {scratch / AGENT_UNIT[0]} {AGENT_UNIT[1]}",
        "mkdir /etc/systemd/system/multi-user.target.wants",
        f"symlink /etc/systemd/system/multi-user.target.wants/lab-agent.service {AGENT_UNIT[1]}",
    ]) + "\n")
    runner.run(["debugfs", "-w", "-f", str(commands), str(image)])

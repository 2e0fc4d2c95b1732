"""ipmi_sim's chassis_control for a simulated BMC (`pvc.cli.localcluster.bmc`), run by its path without site
packages (``python -S``). ipmi_sim asks it the power state on every ``ipmitool chassis status``, and every node's
BMC health check asks every 10 s: through the package, each answer cost 0.1 s of CPU to start Python and import
the local cluster, a whole core at 96 nodes. It answers ``DIRECTORY get power`` itself, from the host's pid file
and marker that the BMC recorded in ``power_evidence`` (two lines; no JSON parser to load); every other request
(the power actions) goes on to the package's module."""
import os
import sys

from pidfiles import live_pid

CONTROL_MODULE = "pvc.cli.localcluster.bmc"
POWER_EVIDENCE = "power_evidence"


def main(argv: list[str]) -> int:
    directory, *request = argv
    if request == ["get", "power"]:
        with open(os.path.join(directory, POWER_EVIDENCE)) as file:
            pid_file, marker = file.read().splitlines()
        powered = live_pid(pid_file, marker) is not None
        print(f"power:{1 if powered else 0}")
        return 0
    os.execv(sys.executable, [sys.executable, "-m", CONTROL_MODULE, directory, *request])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

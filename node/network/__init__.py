"""A node's side of client networks: the devices each network needs here (a VLAN or a VXLAN in a bridge), made
before a VM that uses it is defined or arrives, and removed once no VM here uses it."""

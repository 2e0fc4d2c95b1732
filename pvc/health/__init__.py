"""Health: checks run on their own interval off the keepalive path (`runner`), and the faults they raise, kept
in ZooKeeper by their raiser and read by coordinators (`faults`)."""

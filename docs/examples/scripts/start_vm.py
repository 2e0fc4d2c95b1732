"""Define a VM from a domain XML file and start it, waiting until its node reports it running.

Usage: python start_vm.py DOMAIN.xml NODE[,NODE...]
"""
import sys

import pvc
from pvc.errors import AlreadyExists, NotFound

xml_file, allowed_nodes = sys.argv[1], sys.argv[2].split(",")
with pvc.connect() as cluster:
    xml = open(xml_file).read()
    try:
        vm = cluster.vms.define(xml, node_limit=allowed_nodes, node_selector="mem")
    except AlreadyExists as error:          # defined by an earlier run: keep it
        print(f"note: {error}")
        vm = cluster.vms.info(xml.split("<name>")[1].split("</name>")[0])
    vm = cluster.vms.start(vm["name"], wait=True)     # returns once the node reports it running
    print(f"{vm['name']} is {vm['state']} on {vm['node']}")
    try:
        cluster.vms.info("no-such-vm")
    except NotFound as error:               # every error is a pvc.errors class with a one-line message
        print(f"as expected: {error}")

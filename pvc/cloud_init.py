"""A cloud-init NoCloud config drive, as the bytes of an ISO9660 image.

cloud-init finds the NoCloud data source on any block device whose filesystem is labelled ``cidata`` and reads
the files ``user-data`` and ``meta-data`` from its root. ISO9660 itself allows only short upper-case names, so
the real names are given as Joliet and Rock Ridge names, which every reader cloud-init uses understands. The
image is built by pycdlib, a maintained ISO9660 library, not by hand.
"""
import io
import json

import pycdlib

VOLUME_LABEL = "cidata"
_FILES = (("USERDATA.;1", "user-data"), ("METADATA.;1", "meta-data"))


def meta_data(vm_name: str) -> str:
    """The NoCloud meta-data of a VM: its name as instance id and host name. Values are written as JSON
    strings (valid YAML) so that a name such as ``yes`` or ``1e3`` stays a string."""
    return f"instance-id: {json.dumps(vm_name)}\nlocal-hostname: {json.dumps(vm_name)}\n"


def config_drive(vm_name: str, user_data: str) -> bytes:
    """The ISO9660 image of the config drive holding `user_data` for VM `vm_name`; its size is a whole number
    of 2048-byte sectors, so it is a valid raw volume."""
    contents = {"user-data": user_data.encode(), "meta-data": meta_data(vm_name).encode()}
    image = pycdlib.PyCdlib()
    image.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL)
    try:
        for iso_name, name in _FILES:
            data = contents[name]
            image.add_fp(io.BytesIO(data), len(data), f"/{iso_name}", rr_name=name, joliet_path=f"/{name}")
        written = io.BytesIO()
        image.write_fp(written)
    finally:
        image.close()
    return written.getvalue()

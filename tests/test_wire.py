"""What crosses Pyro5: a bulk result decodes as it was sent, and decoding leaves the garbage collector as it
found it (paused only while a message is decoded)."""
import gc

import Pyro5.serializers

from pvc import wire


def test_a_bulk_result_decodes_whole_and_leaves_the_collector_as_it_was():
    wire.register()
    serializer = Pyro5.serializers.serializers["msgpack"]
    assert Pyro5.serializers.serializers_by_id[serializer.serializer_id] is serializer
    views = [{"name": f"vm{index:05d}", "tags": ["web"], "disks": [{"volume": "pool/disk"}], "running": None}
             for index in range(2000)]
    data = serializer.dumps(views)

    assert gc.isenabled()
    assert serializer.loads(data) == views
    assert gc.isenabled(), "the collector stayed paused after a decode"
    gc.disable()
    try:
        assert serializer.loads(data) == views
        assert not gc.isenabled(), "a decode turned on a collector its caller had paused"
    finally:
        gc.enable()

"""KV-cache events over the wire, as vLLM's ``--kv-events-config`` publisher sends them.

- ``live.kv_events.wire``: vLLM 0.32's framing (ZMQ multipart ``topic, seq, payload``)
  and msgpack encoding of ``EventBatch`` with ``BlockStored``/``BlockRemoved``/
  ``AllBlocksCleared``, encoded and decoded by the lab's own msgspec classes.
- ``live.kv_events.publisher``: the emulator's publisher (ZMQ PUB plus the replay
  ROUTER socket).
- ``live.kv_events.subscriber``: the gateway's subscriber: one stream per backend,
  replay on a sequence gap, restart detection, hashes translated into the router's
  block names, fed to ``routing.Router``'s exact mirror.

docs/live.md ("KV-cache events") describes the whole path.
"""

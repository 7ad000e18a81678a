"""Helpers the test modules share; no test module imports from another test module.

- ``guide``: the integration guide's example events and the upsert they become;
- ``engine``: the engine on in-memory fakes (build, run until, committed offsets);
- ``stream``: the reliability suites' versioned stream, their checks and consumer groups.

Lower-level pieces stay next to what they drive: ``tests/kafka_broker.py`` (the session's
broker), ``tests/integration/consumer_harness.py`` (consumer and sandbox subprocesses, topic
reads), ``tests/unit/engine_fakes.py`` (the in-memory source, sink and HighLevel) and
``tests/virtual_time.py`` (the virtual-time event loop).
"""

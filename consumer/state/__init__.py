"""Durable state: the profile store's changelog topic on Kafka (``changelog``), the
encryption at rest of its values (``encryption``, AES-256-GCM), and the partitioned,
disk-backed profile state in SQLite files (``profile_state``, issue 19; not used by the engine
yet).

May import: ``consumer.core`` (profiles), ``consumer.kafka``, ``consumer.errors``,
``cryptography``. Never: the commands or observe.
"""

"""Durable state: the profile store's changelog topic on Kafka (``changelog``) and the
encryption at rest of its values (``encryption``, AES-256-GCM).

May import: ``consumer.core`` (profiles), ``consumer.kafka``, ``consumer.errors``,
``cryptography``. Never: the commands or observe.
"""

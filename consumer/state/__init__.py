"""Durable state: the profile store's changelog topic on Kafka (``changelog``).

May import: ``consumer.core`` (profiles), ``consumer.kafka``, ``consumer.errors``. Never: the
commands or observe.
"""

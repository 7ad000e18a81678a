"""HighLevel's v2 Contacts API, as the consumer calls it.

Lives here: the HTTP client (``client``: ``POST /contacts/upsert`` and the tags endpoint over
aiohttp, ``Version: 2021-07-28``) and the meaning of each answer (``verdicts``: the verdict the
engine acts on, and the fields HighLevel silently did not apply).

May import: aiohttp (``client`` only: ``verdicts`` is pure and is what the engine imports),
``consumer.core`` (its normalisers, so an answer is read as the mapping wrote it),
orjson and ``consumer.errors``. Never: the engine, Kafka, the commands.
"""

"""Rate limits shared by everything that talks to one HighLevel location.

Lives here: the pure budget arithmetic (``budget``: burst window, daily budget, what
HighLevel's ``X-RateLimit-*`` headers say), the asyncio limiter that hands out permits
(``limiter``) and the Redis backend that shares one budget between replicas
(``redis_backend``).

May import: ``consumer.errors``, asyncio (not ``budget``: pure, time passed in) and
(``redis_backend`` only) redis. Never: the engine, Kafka, aiohttp, the commands.
"""

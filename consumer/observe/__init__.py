"""What operators see: Prometheus metrics (``metrics``), the HTTP listener with /metrics,
/healthz, /readyz and the Event Debugger (``web``), the ring buffer of recent HighLevel calls
behind the debugger (``recent_deliveries``) and readiness (``readiness``).

May import: ``consumer.core``, ``consumer.engine`` (its snapshot and value types),
``consumer.highlevel.verdicts``, ``consumer.ratelimit``, ``consumer.errors``,
prometheus_client and aiohttp (``web`` only). Never: Kafka or the commands.
"""

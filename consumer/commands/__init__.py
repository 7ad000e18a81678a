"""The ``ghl-consumer`` command line: ``cli`` dispatches to one module per subcommand (``run``,
``map_events``, ``dlq``, ``audit``, ``forget``, ``trace``, ``demo``, ``sandbox``), each with
``add_arguments(parser)`` and ``main(args) -> int``; ``preamble`` is what they share
(``--config``, ``--log-level``, logging, settings, errors as exit statuses).

The top layer: the only place that reads ``consumer.config`` settings into components and
wires adapters to the engine. May import every other package of ``consumer``.
"""

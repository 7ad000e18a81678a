"""ghl-consumer: Kafka identity events -> HighLevel (LeadConnector) contact upserts."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ghl-consumer")  # pyproject.toml's, as installed: one place to bump
except PackageNotFoundError:  # a source tree that was never installed (pip install -e .)
    __version__ = "0+unknown"

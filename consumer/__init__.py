"""ghl-consumer: Kafka identity events -> HighLevel (LeadConnector) contact upserts."""

__version__ = "0.1.0"

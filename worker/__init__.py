"""worker: champion/challenger online learning on Kafka."""

__version__ = "0.1.0"

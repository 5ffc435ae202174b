"""callscribe: self-hosted real-time speech recognition for call centers."""

__version__ = "0.1.0"

"""Sluice: a self-hosted serverless platform for Python."""

from sluice.app import App
from sluice.errors import SluiceError

__all__ = ["App", "SluiceError"]
__version__ = "0.1.0"

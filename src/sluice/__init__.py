"""Sluice: a self-hosted serverless platform for Python."""

from sluice.app import App
from sluice.client import Client, FunctionError
from sluice.errors import SluiceError

__all__ = ["App", "Client", "FunctionError", "SluiceError"]
__version__ = "0.1.0"

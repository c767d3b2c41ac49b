"""Corral: serve machine-learning models over HTTP."""

from .model import Batching as Batching
from .model import Model as Model
from .server import Server as Server

__version__ = "0.1.0"

"""sbusr: JSON-RPC methods for Hesong IPSC flows over SmartBus, and an HTTP flow launcher."""

from importlib import metadata

try:
    __version__ = metadata.version("sbusr")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

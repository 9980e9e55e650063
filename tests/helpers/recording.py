"""A stand-in for BusConnection's reply side, for tests of what gets answered without a bus."""

from __future__ import annotations

from oslo_config import cfg

from sbusr import opts
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address

#: the IPSC that sends the test requests
CALLER = Address(0, 3, codec.CLIENT_TYPE_IPSC)


class RecordingConnection:
    """Records the replies sent on it, in order."""

    def __init__(self) -> None:
        self.replies: list[tuple[Address, str, bytes]] = []

    def send_reply(self, to: Address, title: str, body: bytes) -> None:
        self.replies.append((to, title, body))


def default_conf() -> cfg.ConfigOpts:
    """sbusr's options at their defaults, read from no file."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    return conf

"""Whether a round trip to the shards is waited for at once, or travels while the next step computes.

Overlapped (async mode with `train.overlap`, the default), the round trip of one step travels
while the next gradient is computed, on weights one round older: the shard's work and the TCP
copies hide behind compute, at the price of one clock of staleness. SSP and BSP wait for every
read, as their guarantees require (a shard holds a read back until the consistency model allows it).
"""
from __future__ import annotations

from downpour.ps.client import ShardClient
from downpour.ps.client.data import RoundTrip


class Blocking:
    """Every round trip is waited for as soon as it is sent."""

    buffers = 1  # a pushed gradient is done with before the next step starts summing
    ahead = 0    # a read serves the steps right after it
    label = ""

    def __init__(self, client: ShardClient):
        self.client = client

    def send(self, trip: RoundTrip, last: bool) -> None:
        self.client.finish(trip)

    def settle(self) -> None:
        """Nothing is ever left in flight."""


class Overlapped:
    """A round trip is waited for at the next step's exchange, after that step's compute."""

    buffers = 2  # the gradient in flight stays untouched while the next one is summed
    ahead = 1    # a read lands after the next step's compute: it serves the step after next
    label = ", overlapped"

    def __init__(self, client: ShardClient):
        self.client = client
        self.in_flight: RoundTrip | None = None

    def send(self, trip: RoundTrip, last: bool) -> None:
        """Leave `trip` in flight, unless it is the last step's: nothing follows to hide it behind."""
        if last:
            self.client.finish(trip)
        else:
            self.in_flight = trip

    def settle(self) -> None:
        """Wait for the round trip in flight, if any: its weights serve the step about to start."""
        if self.in_flight is not None:
            trip, self.in_flight = self.in_flight, None
            self.client.finish(trip)


def for_job(config: dict, client: ShardClient) -> Blocking | Overlapped:
    """Overlapped in async mode with `train.overlap`; blocking otherwise."""
    if config["train"]["overlap"] and config["consistency"]["mode"] == "async":
        return Overlapped(client)
    return Blocking(client)

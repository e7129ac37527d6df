"""The pure domain core: specs, strategies, plans and rollouts. No I/O, no drivers."""

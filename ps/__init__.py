"""The system: wire protocol, layout, shards, coordinator, client, config, checkpoints, launcher, CLI."""

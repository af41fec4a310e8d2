"""Framework-independent helpers: registry, config, seeding, checkpoints, metrics, tables, logging."""

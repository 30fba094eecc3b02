"""Before a GPU is touched: what a preset and a layout cost (planner) and whether one rank of it builds (dry_run)."""

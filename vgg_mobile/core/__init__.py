"""The lowest layer: errors, atomic output, the run-directory contract, budgets. Imports nothing above it."""

"""Puzzle NAS: blockwise distillation, scoring, cost profiling, MIP, DeciLM export (later issues)."""

"""Evaluation: suites of prompts rendered once (cached by content), judged, gated against a baseline, and turned into
verdicts a team can ship on (`weightshop eval`). See docs/eval.md."""

"""The closed loop and strategy dry runs: the platform decides for the simulated bank, the
bank answers from its ground truth, the platform learns from its own log (a top floor, beside
`nba.quickstart`: it orchestrates serving, training and the simulator; nothing below imports it)."""

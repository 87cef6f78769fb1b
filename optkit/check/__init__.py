"""Checks on ONNX Runtime: sessions with typed providers and levels (`runtime`), inputs made or read
(`inputs`), output comparison by tolerance (`compare`), the static scan for random ops
(`determinism`), verdicts and the verification flow (`verify`), the float64 arbiter (`reference64`),
bisection across a rewrite (`bisect`), latency (`bench`).
"""

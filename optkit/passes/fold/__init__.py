"""Folding affine maps into layers: the map (`affine_map`: BatchNorm and per-channel arithmetic as
one y = a*x + b), conv geometry, the fold driver and its context (`support`), and the two directions:
into the producing layer (`into_producer`) and into the consuming layer (`into_consumer`).
"""

"""The engine's core: the pass contract (`contract`), the pipeline with rollback (`pipeline`), the
graph API every mutation goes through and the constant policy (`graph`), shape inference (`shapes`).
"""

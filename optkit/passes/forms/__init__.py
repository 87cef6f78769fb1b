"""Reading the graph without changing it: pattern matching (`pattern`), the activation and
normalization recognizers (`activations`, `normalizations`), element-wise shape values
(`shape_values`) and what ONNX Runtime runs well (`runtime_support`).
"""

"""Model export: ONNX graphs with a manifest, written atomically into a versioned model repository."""

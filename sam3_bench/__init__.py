"""`sam3 bench`: transformers, raw ONNX Runtime, the in-process predictor and the gRPC services, side by side."""

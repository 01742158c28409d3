"""sitsflow_models: TempCNN and LSTM pixel classifiers for Sentinel-2 time series, trained
with PyTorch and exported to ONNX (with normalisation and NaN handling in the graph) for
the sitsflow host, which runs them with ONNX Runtime. See models/README.md."""

__version__ = "0.1.0"

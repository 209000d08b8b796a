"""The device side: training, adapters and generation on ONNX Runtime.

Never imports torch, transformers, optimum or peft (a test proves it).
"""

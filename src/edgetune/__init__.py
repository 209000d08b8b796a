"""edgetune: fine-tune and serve language models on the devices you own."""

__version__ = "0.1.0"

"""maskvit: masked image reconstruction with Vision Transformers on CIFAR-10."""

__version__ = "0.1.0"

"""kubetune: fine-tune and serve language models on Kubernetes, declaratively."""

__version__ = "0.1.0"

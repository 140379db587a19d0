"""SmartFed: federated fine-tuning by routing rank-wise experts of existing LoRA modules."""

__version__ = "0.1.0"

"""The LightningModule that runs conversations inside ``validate``."""

from lightning_modules.models.interaction import ExtractorConfig, InteractionModule

__all__ = ["ExtractorConfig", "InteractionModule"]

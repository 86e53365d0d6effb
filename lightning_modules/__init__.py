"""Lightning glue: the LightningCLI entry point, data modules over coral.tasks, and the interaction module."""

"""A small user project, the way people write them: a LightningDataModule and a LightningModule of their own."""

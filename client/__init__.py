"""Client node: a Flower ClientApp that trains LoRA adapters on images that never leave the site."""

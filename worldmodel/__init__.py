"""Video world model: masked conditional diffusion, Temp-LoRA memory, slow and slow-fast training."""

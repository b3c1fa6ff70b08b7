"""world-SD: a small Stable Diffusion of the procedural world, trained here, that ships with the product.

The product's Stable Diffusion path (``backend/priors/stable_diffusion.py``: VAE, CLIP text encoder, UNet,
classifier-free guidance, view words) had never made an object, because no real weights can be downloaded here.
world-SD is a diffusers-format latent diffusion model of the same classes, trained on renders of the procedural
world, so the world can judge what the SD path makes. It is a measuring device, like the world itself.

- ``data``: the training distribution (renders, captions in the product's own grammar).
- ``components``: the model's architecture (configs) and the diffusers folder it is saved as.
- ``train``: the trainer (``python -m backend.worldsd.train``), resumable from its checkpoint.
- ``judge``: what a 2D sample shows, measured by the world (named colour, shape by silhouette).
"""

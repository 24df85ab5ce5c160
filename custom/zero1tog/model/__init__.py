"""Zero-1-to-G's diffusion model: the multi-view, multi-attribute UNet on SD-image-variations (:mod:`.unet`), its
official tensor layout and checked loading (:mod:`.layout`, :mod:`.loading`), and the VAE + CLIP image encoder that
turn the input image into the UNet's condition (:mod:`.conditioning`). diffusers/transformers load on first use."""

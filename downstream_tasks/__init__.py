"""Dense downstream tasks (segmentation, change detection) on the SpectralGPT encoder."""

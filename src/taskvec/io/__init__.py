"""Files, at the bottom of the layers: atomic writes and safetensors vector files."""

"""QLoRA's quantized base: number formats, their storage in a graph, the base and the LM head rewrites."""

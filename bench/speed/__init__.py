"""What measures speed and memory: the pipeline bench behind `moai-edge bench` (per-stage latency, batch sizes, peak
memory, the decode roofline), each expert and the backbone against the PyTorch reference, the footprint table of the
real 7B per precision preset, the image cache, the server under load."""

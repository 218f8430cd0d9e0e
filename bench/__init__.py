"""Measurement (needs moai-edge[export] for the PyTorch side): speed/, accuracy/, compare/, and reference/, the
PyTorch oracle behind the runtime's surface."""

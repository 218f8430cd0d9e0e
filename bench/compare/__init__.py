"""What compares against others: the runtime against the PyTorch reference (`moai-edge verify`: every graph, the
experts' results, the verbalized text, the greedy tokens), and our decoder against onnxruntime-genai's."""

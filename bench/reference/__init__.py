"""The PyTorch reference, behind the runtime's surface (the parity oracle; needs moai-edge[export]).

    pipeline.ReferencePipeline   runtime.Pipeline      run(requests) -> list[Result]
    backbone.ReferenceBackbone   runtime.Backbone      features + aux + questions -> answers
    experts.ReferenceExperts     runtime Experts       images -> list[ExpertResults]
    families                     runtime.families      each family's prefill extras, in PyTorch
    generate                     runtime.generation    Hugging Face generate semantics
    prompt, pixels, scene_graph                        the reference's prompt, preprocessing, PSG post-processing

bench.compare holds the one comparison of runtime and reference results.
"""

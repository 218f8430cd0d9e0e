"""The PyTorch reference, behind the runtime's surface (the parity oracle; needs moai-edge[export]).

    pipeline.ReferencePipeline   runtime.Pipeline              run(requests) -> list[Result]
    backbone.ReferenceBackbone   runtime.decoding.Backbone     features + aux + questions -> answers
    experts.ReferenceExperts     runtime.experts.Experts       images -> list[ExpertResults], one twin per
                                                               registry entry
    (export.family_heads)        runtime.families heads        each family's prefill extras, in PyTorch
    generate                     runtime.decoding.generation   Hugging Face generate semantics
    prompt, pixels, scene_graph                                the reference's prompt, preprocessing, PSG
                                                               post-processing

bench.compare.results holds the one comparison of runtime and reference results.
"""

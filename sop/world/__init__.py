"""World4RL: a diffusion world model of the fleet's tasks, and policy refinement inside it (arXiv 2509.19080).

    sop world train  --store S --out W                      fit the world model, success model and MLP baseline
    sop world eval   --world W --store S                    open-loop / autoregressive error, success P/R, a plot
    sop world refine --world W --checkpoint C --out C2      refine a diffusion policy with zero env steps

Where the parts live: `two_hot` (action encoding), `edm` (EDM preconditioning and the diffusers sampler),
`configuration_world` (the architecture), `modeling_world` (the networks and the world-model folder),
`transitions` (episodes of a store as (history, action, next state) samples), `train`, `evaluate`,
`imagination` (batched policy rollouts inside the model) and `refine`.
"""

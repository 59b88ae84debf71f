"""Generated gRPC code for the SOP wire contract (protos/sop/v1). Do not edit."""

"""Scale-out: where a process sits in the cluster (cluster), FSDP2 + expert parallelism (parallel),
Lightning strategies and fault tolerance (model_parallel, fault), Kubernetes manifests (k8s)."""

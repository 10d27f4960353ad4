"""Several workers behind the one job queue, on Ray (optional: requirements-cluster.txt).

The queue keeps its order, limits and store; `ClusterExecutor` runs the jobs it hands over on
`StudioWorker` actors, each owning one device and its own model cache. `choice` (which worker
takes a job) needs no Ray, so the benchmark in webui/tools/cluster_bench.py can simulate it.
"""

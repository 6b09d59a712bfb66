"""downpour: a distributed parameter-server training system.

`import downpour` is the public face: `launch` a local cluster, `train` in one process,
`connect` to a job's shards from your own training loop. The packages beneath are
`downpour.model` (the autodiff engine), `downpour.ps` (the system) and `downpour.worker`
(one worker's training loop).
"""
